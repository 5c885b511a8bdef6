"""URSA's interleaved 3-axis rotary position embedding (docs/ARCHITECTURE.md, "Rotary positions").

Every token has a position triple (t, h, w). Rotary pair i of a head (dims i and i + D/2, rotate-half convention)
rotates by pos[axis(i)] * theta^(-2i/D), where the first 3*(D/8) pairs cycle t, h, w and the rest cycle h, w.
For text tokens (t == h == w) this is exactly 1-D RoPE.
"""
from __future__ import annotations

import torch
from torch import nn


def pair_axes(head_dim: int) -> torch.Tensor:
    """Axis (0 = t, 1 = h, 2 = w) of each of the head_dim/2 rotary pairs."""
    half = head_dim // 2
    rep1 = head_dim // 8
    interleaved = 3 * rep1
    axes = [i % 3 if i < interleaved else 1 + (i - interleaved) % 2 for i in range(half)]
    return torch.tensor(axes, dtype=torch.long)


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (theta ** -exponent).float()


def sequence_positions(prompt_length: int, latent_shape: tuple[int, int, int], device=None) -> torch.Tensor:
    """Position triples [L + 1 + T*H*W, 3] for `[text (L), BOV, visual (T, H, W)]`.

    Text token j -> (j, j, j); BOV -> (L, L, L); visual (t, h, w) -> (L + 1 + t, h, w): only the temporal
    axis is offset.
    """
    frames, height, width = latent_shape
    text = torch.arange(prompt_length + 1, device=device).unsqueeze(1).expand(-1, 3)
    t, h, w = torch.meshgrid(torch.arange(frames, device=device), torch.arange(height, device=device),
                             torch.arange(width, device=device), indexing="ij")
    visual = torch.stack([t.flatten() + prompt_length + 1, h.flatten(), w.flatten()], dim=1)
    return torch.cat([text, visual], dim=0)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape [S, head_dim] (each pair's angle repeated for both halves), computed in fp32."""
    axes = pair_axes(head_dim).to(positions.device)
    inv_freq = inverse_frequencies(head_dim, theta).to(positions.device)
    angles = positions[:, axes].float() * inv_freq  # [S, D/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, S, D]; cos/sin: [S, D]."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """The model's positions (as transformers' Qwen3RotaryEmbedding): cos/sin tables [S, head_dim] of the sequence
    `[prompt (max_prompt_length), BOV, a T x h x w clip]`, computed once per forward and handed to every layer.
    Holds no weights, so the state dict is the official one."""

    def __init__(self, head_dim: int, theta: float, prompt_length: int):
        super().__init__()
        self.head_dim, self.theta, self.prompt_length = head_dim, theta, prompt_length

    def forward(self, latent_shape: tuple[int, int, int], dtype: torch.dtype, device=None):
        positions = sequence_positions(self.prompt_length, latent_shape, device=device)
        return rotary_cos_sin(positions, self.head_dim, self.theta, dtype)
