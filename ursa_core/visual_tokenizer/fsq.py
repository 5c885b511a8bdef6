"""Finite scalar quantization (FSQ) as used by URSA's Cosmos tokenizer (docs/ARCHITECTURE.md, "Visual tokenizers").

An index packs one digit per channel, channel 0 being the least significant digit. A digit d of a channel
with L levels stands for the code value (d - L//2) / (L//2).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

FSQ_LEVELS = (8, 8, 8, 5, 5, 5)
BOUND_EPS = 1e-3  # widens the tanh range a little so that the outermost levels stay reachable


def codebook_size(levels: Sequence[int] = FSQ_LEVELS) -> int:
    return math.prod(levels)


def _constants(levels: Sequence[int], device, dtype):
    """Per-channel tensors: levels, half widths, digit weights (basis) and the bound's half_l/offset/shift."""
    levels_t = torch.tensor(list(levels), device=device, dtype=torch.int64)
    half_width = levels_t // 2
    basis = torch.cumprod(torch.tensor([1] + list(levels[:-1]), device=device, dtype=torch.int64), 0)
    half_l = (levels_t - 1).to(dtype) * (1 + BOUND_EPS) / 2
    # Even level counts have no centre value, so the grid is shifted by half a step.
    offset = torch.where(levels_t % 2 == 0, 0.5, 0.0).to(dtype)
    shift = torch.atanh(offset / half_l)
    return levels_t, half_width, basis, half_l, offset, shift


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)


def bound(z: torch.Tensor, levels: Sequence[int] = FSQ_LEVELS) -> torch.Tensor:
    """Squash channels-last z into each channel's digit range (before rounding)."""
    _, _, _, half_l, offset, shift = _constants(levels, z.device, z.dtype)
    return torch.tanh(z + shift) * half_l - offset


def quantize(z: torch.Tensor, levels: Sequence[int] = FSQ_LEVELS) -> torch.Tensor:
    """Raw pre-quantization values [B, D, ...] -> int64 indices [B, ...]."""
    if z.shape[1] != len(levels):
        raise ValueError(f"FSQ expects {len(levels)} channels in dim 1, got shape {tuple(z.shape)}")
    # Half precision would blur the rounding boundaries; the reference also rounds in float32.
    work_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    _, half_width, basis, _, _, _ = _constants(levels, z.device, work_dtype)
    rounded = torch.round(bound(_channels_last(z).to(work_dtype), levels))
    digits = rounded.to(torch.int64) + half_width
    return (digits * basis).sum(-1)


def digits_of(ids: torch.Tensor, levels: Sequence[int] = FSQ_LEVELS) -> torch.Tensor:
    """Integer indices [...] -> per-channel digits [..., D] in [0, L)."""
    levels_t, _, basis, _, _, _ = _constants(levels, ids.device, torch.float32)
    return torch.div(ids.to(torch.int64).unsqueeze(-1), basis, rounding_mode="floor") % levels_t


def dequantize(ids: torch.Tensor, levels: Sequence[int] = FSQ_LEVELS,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer indices [B, ...] -> code vectors [B, D, ...] with values in [-1, 1]."""
    _, half_width, _, _, _, _ = _constants(levels, ids.device, torch.float32)
    codes = (digits_of(ids, levels) - half_width).to(torch.float32) / half_width.to(torch.float32)
    return _channels_first(codes.to(dtype))


def code_table(levels: Sequence[int] = FSQ_LEVELS, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Every code vector in index order: Tensor[K, D] (the scheduler's `path.emb` for FSQ checkpoints)."""
    ids = torch.arange(codebook_size(levels), device=device)
    return _channels_last(dequantize(ids.unsqueeze(0), levels, dtype))[0]


def fsq_table_matches(table: torch.Tensor, path_emb: torch.Tensor, atol: float = 1e-3) -> bool:
    """True when a scheduler `path.emb` equals the FSQ code table (same shape, values within fp16 precision)."""
    if tuple(table.shape) != tuple(path_emb.shape):
        return False
    return bool(torch.allclose(table.float().cpu(), path_emb.float().cpu(), atol=atol, rtol=0))
