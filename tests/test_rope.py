"""RoPE against a plain float64 implementation written from the spec's pair lists (docs/ARCHITECTURE.md, "Rotary positions")."""
import math

import torch

from ursa_core.model.rope import apply_rotary, pair_axes, rotary_cos_sin, sequence_positions


def spec_axis_lists():
    # Written out as the spec states it, not by the formula the module uses.
    t = list(range(0, 46, 3))
    h = list(range(1, 47, 3)) + list(range(48, 64, 2))
    w = list(range(2, 48, 3)) + list(range(49, 64, 2))
    return t, h, w


def reference_rotary(x, positions, theta=1e6):
    """x [S, 128] float64; rotate pair (i, i+64) by pos[axis(i)] * theta^(-2i/128) with explicit loops."""
    t_pairs, h_pairs, w_pairs = spec_axis_lists()
    axis_of = {}
    for axis, pairs in enumerate((t_pairs, h_pairs, w_pairs)):
        for i in pairs:
            axis_of[i] = axis
    out = x.clone()
    for s in range(x.shape[0]):
        for i in range(64):
            angle = float(positions[s][axis_of[i]]) * theta ** (-2 * i / 128)
            a, b = float(x[s, i]), float(x[s, i + 64])
            out[s, i] = a * math.cos(angle) - b * math.sin(angle)
            out[s, i + 64] = b * math.cos(angle) + a * math.sin(angle)
    return out


def test_pair_axes_match_spec_counts():
    axes = pair_axes(128)
    t, h, w = spec_axis_lists()
    assert sorted(torch.nonzero(axes == 0).flatten().tolist()) == t
    assert sorted(torch.nonzero(axes == 1).flatten().tolist()) == sorted(h)
    assert sorted(torch.nonzero(axes == 2).flatten().tolist()) == sorted(w)
    assert (len(t), len(h), len(w)) == (16, 24, 24)


def test_positions_layout():
    pos = sequence_positions(5, (2, 3, 4))
    assert pos.shape == (5 + 1 + 24, 3)
    assert pos[:6].tolist() == [[j, j, j] for j in range(6)]  # text then BOV at (L, L, L)
    # visual (t, h, w) -> (L + 1 + t, h, w), row-major over (t, h, w)
    assert pos[6].tolist() == [6, 0, 0]
    assert pos[6 + 4].tolist() == [6, 1, 0]
    assert pos[6 + 12 + 5].tolist() == [7, 1, 1]


def test_rotary_matches_float64_reference():
    torch.manual_seed(0)
    positions = torch.cat([sequence_positions(4, (2, 3, 3))[:3], sequence_positions(7, (3, 5, 6))[-9:]])
    x = torch.randn(positions.shape[0], 128, dtype=torch.float64)
    cos, sin = rotary_cos_sin(positions, 128, 1e6, torch.float64)
    ours = apply_rotary(x.view(1, 1, *x.shape), cos, sin)[0, 0]
    ref = reference_rotary(x, positions.tolist())
    # cos/sin angles are computed in fp32 like the reference, so allow fp32-angle error.
    assert torch.allclose(ours, ref, atol=2e-4), (ours - ref).abs().max()


def test_text_positions_reduce_to_1d_rope():
    positions = torch.arange(10).unsqueeze(1).expand(-1, 3)
    cos, sin = rotary_cos_sin(positions, 128, 1e6, torch.float64)
    inv = 1e6 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    angles = torch.arange(10, dtype=torch.float64)[:, None] * inv
    assert torch.allclose(cos[:, :64], angles.cos(), atol=1e-5)
    assert torch.allclose(sin[:, 64:], angles.sin(), atol=1e-5)
