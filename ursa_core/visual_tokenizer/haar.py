"""Parameter-free 3-D Haar wavelet transform of the Cosmos patcher (docs/ARCHITECTURE.md, "Visual tokenizers").

One level halves T, H and W and multiplies channels by 8. Sub-bands are stacked band-major
(channel = band * C + c) with band = 4*t + 2*h + w, t/h/w being 0 for the low-pass and 1 for the high-pass
half of that axis, i.e. the order `for T in (L, H): for H in (L, H): for W in (L, H)`.
Each 1-D step is orthonormal (taps 1/sqrt2); the level is then divided by 2*sqrt2, so the low-low-low band
is the mean of each 2x2x2 cube.
"""
from __future__ import annotations

import math

import torch

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
LEVEL_SCALE = 2.0 * math.sqrt(2.0)
_AXES_FORWARD = (2, 3, 4)  # T, then H, then W; the last split axis varies fastest in the band order


def _split_low_high(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = x.shape[dim]
    if size % 2:
        # Reflect padding by one sample at the end (the reference pads (0, 1) in "reflect" mode).
        x = torch.cat([x, x.narrow(dim, size - 2, 1)], dim)
    pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
    first, second = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return (first + second) * _INV_SQRT2, (first - second) * _INV_SQRT2


def _merge_low_high(low: torch.Tensor, high: torch.Tensor, dim: int) -> torch.Tensor:
    first, second = (low + high) * _INV_SQRT2, (low - high) * _INV_SQRT2
    return torch.stack([first, second], dim + 1).flatten(dim, dim + 1)


def haar_dwt3d(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, 8C, ceil(T/2), ceil(H/2), ceil(W/2)]."""
    bands = [x]
    for dim in _AXES_FORWARD:
        bands = [half for band in bands for half in _split_low_high(band, dim)]
    return torch.cat(bands, 1) / LEVEL_SCALE


def haar_idwt3d(y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of `haar_dwt3d` for even sizes: [B, 8C, T, H, W] -> [B, C, 2T, 2H, 2W]."""
    if y.shape[1] % 8:
        raise ValueError(f"inverse Haar needs a multiple of 8 channels, got {y.shape[1]}")
    bands = list((y * LEVEL_SCALE).chunk(8, 1))
    # Undo the splits in reverse order: neighbouring bands differ in the fastest-varying axis first.
    for dim in reversed(_AXES_FORWARD):
        bands = [_merge_low_high(bands[i], bands[i + 1], dim) for i in range(0, len(bands), 2)]
    return bands[0]


def patchify(x: torch.Tensor, levels: int) -> torch.Tensor:
    for _ in range(levels):
        x = haar_dwt3d(x)
    return x


def unpatchify(y: torch.Tensor, levels: int) -> torch.Tensor:
    for _ in range(levels):
        y = haar_idwt3d(y)
    return y
