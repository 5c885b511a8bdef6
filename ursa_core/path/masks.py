"""A repaint mask to every latent token's start time: the one rule (docs/ARCHITECTURE.md, "Repaint masks").

The mask is ComfyUI's MASK at the canvas's pixel size: [H, W] or [F, H, W] in 0..1, 1 = repaint. It reaches the
token grid through the tokenizer's strides:

* time (the causal video tokenizer, 1 + 4k frames): latent frame 0 is pixel frame 0 alone, latent frame k >= 1 is
  pixel frames 4k-3 .. 4k (rules.latent_frame_of); one mask frame stands for every frame;
* space: a token is s x s pixels (8 for FSQ, 16 for IBQ).

A token is repainted as much as the most repainted of its pixels (max pooling: any repainted pixel repaints its
token, so a thin stroke is never lost and the seam falls outside what was painted). `grow` then dilates the map by
that many tokens in height and width (not in time). A token of level r starts at t0 = 1 - strength * r:
0 = regenerated from noise, 1 = held exactly, in between = the source token noised to t0 and refined.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .. import rules
from ..errors import InputError
from .schedule import StartTimes


def check_mask(mask) -> torch.Tensor:
    """A MASK ([H, W] or [F, H, W], values in 0..1) as float32 [F, H, W], or one line saying what it is instead."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"the mask must be a MASK tensor [H, W] or [frames, H, W] with values 0..1, got "
                         f"{type(mask).__name__}")
    if mask.ndim not in (2, 3):
        raise InputError(f"the mask must be [H, W] or [frames, H, W] (a MASK, not an IMAGE), got shape "
                         f"{list(mask.shape)}")
    if mask.numel() == 0:
        raise InputError(f"the mask is empty (shape {list(mask.shape)})")
    if not (mask.dtype.is_floating_point or mask.dtype == torch.bool):
        raise InputError(f"the mask must hold numbers from 0 to 1, got {mask.dtype} values: scale them to 0..1")
    mask = mask.float().reshape(-1, *mask.shape[-2:])
    if not bool(((mask >= 0) & (mask <= 1)).all()):  # NaN fails too
        low, high = float(mask.nan_to_num(-1.0).min()), float(mask.nan_to_num(2.0).max())
        raise InputError(f"the mask must hold values from 0 (keep) to 1 (repaint), found values in [{low:g}, "
                         f"{high:g}] (or NaN)")
    return mask


def match_frames(mask: torch.Tensor, pixel_frames: int) -> torch.Tensor:
    """[F, H, W] with one frame (for every frame) or one per pixel frame of the clip; else one line naming both."""
    if mask.shape[0] not in (1, pixel_frames):
        raise InputError(f"the mask has {mask.shape[0]} frames but the video has {pixel_frames}: give one mask for "
                         f"every frame, or a single mask for all of them")
    return mask.expand(pixel_frames, *mask.shape[1:])


def token_levels(mask: torch.Tensor, latent_shape: Sequence[int], temporal_stride: int,
                 spatial_stride: int) -> torch.Tensor:
    """The repaint level of every latent token [T, h, w] from a canvas-size mask [F, H, W] (F = 1 or the clip's
    pixel frames): the maximum over the token's pixels and pixel frames."""
    frames, height, width = latent_shape
    mask = check_mask(mask)
    canvas = (height * spatial_stride, width * spatial_stride)
    if tuple(mask.shape[1:]) != canvas:
        raise InputError(f"the mask is {mask.shape[2]}x{mask.shape[1]} pixels but the canvas is {canvas[1]}x"
                         f"{canvas[0]}: fit it to the canvas first (visual_tokenizer.canvas.mask_for_canvas)")
    pooled = F.max_pool2d(mask.unsqueeze(1), spatial_stride).squeeze(1)  # [F, h, w]
    pooled = match_frames(pooled, rules.pixel_frames(frames, temporal_stride))
    owner = frame_owner(pooled.shape[0], temporal_stride)
    return torch.stack([pooled[owner == k].amax(0) for k in range(frames)])


def frame_owner(pixel_frames: int, temporal_stride: int) -> torch.Tensor:
    """The latent frame each pixel frame belongs to [F] (rules.latent_frame_of), for indexing per-token tensors."""
    return torch.tensor([rules.latent_frame_of(p, temporal_stride) for p in range(pixel_frames)])


def grow_levels(levels: torch.Tensor, grow: int) -> torch.Tensor:
    """Dilate [T, h, w] levels by `grow` tokens in height and width (a token takes its neighbourhood's maximum)."""
    grow = rules.grow(grow)
    if grow == 0:
        return levels
    return F.max_pool2d(levels.unsqueeze(1), 2 * grow + 1, stride=1, padding=grow).squeeze(1)


def mask_start_times(mask: torch.Tensor, latent_shape: Sequence[int], temporal_stride: int, spatial_stride: int,
                     strength: float = 1.0, grow: int = 0) -> StartTimes:
    """Every token's start time from a canvas-size repaint mask: t0 = 1 - strength * level, held where t0 = 1."""
    levels = grow_levels(token_levels(mask, latent_shape, temporal_stride, spatial_stride), grow)
    return StartTimes((1.0 - rules.strength(strength) * levels.double()).clamp(0.0, 1.0))
