"""The pixels of a repaint as the tokenizer sees them: masks read and fit to the canvas like their image, padding for
outpainting, and the decoded repaint composited back onto the source pixels (docs/ARCHITECTURE.md, "Repaint
masks").

A mask is ComfyUI's MASK: [F, H, W] float in 0..1, 1 = repaint. In files it is the luminance of an image or of
each video frame (white = repaint).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import rules
from ..errors import InputError
from ..files.media import VIDEO_SUFFIXES, fit_frames, fit_planes, load_image, load_video
from ..path.masks import check_mask, frame_owner

log = logging.getLogger(__name__)

FILLS = ("edge", "gray")  # what the padded pixels of an outpainting canvas hold
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L" mode


@dataclass(frozen=True)
class PixelFit:
    """How source pixels of `width` x `height` were fit to a canvas (files.media.fit_frames' `mode`), so a mask
    drawn on them and the source itself (for a composite) take exactly the same way."""
    width: int
    height: int
    mode: str = "crop"


def to_luma(images: torch.Tensor) -> torch.Tensor:
    """IMAGE [F, H, W, 3] -> [F, H, W] luminance in 0..1."""
    weights = torch.tensor(LUMA, dtype=torch.float32)
    return (images[..., :3].float() * weights).sum(-1).clamp(0, 1)


def read_mask(path: str | Path, max_frames: int | None = None) -> torch.Tensor:
    """A mask file -> [F, H, W]: an image (one mask for every frame) or a video (one per frame), white = repaint."""
    path = Path(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return to_luma(load_video(path, max_frames))
    return to_luma(load_image(path))


def fit_mask(mask: torch.Tensor, width: int, height: int, mode: str = "crop") -> torch.Tensor:
    """[F, H, W] -> [F, height, width] by the same geometry as the image (fit_frames), resized so that a canvas
    pixel takes the largest value of the source pixels it covers: a thin stroke survives any downscale. Pad mode's
    bars hold 0 (kept)."""
    def largest(x, h, w):
        return F.adaptive_max_pool2d(x, (h, w))
    return fit_planes(mask.unsqueeze(1), width, height, mode, largest).squeeze(1)


def mask_for_canvas(mask: torch.Tensor, canvas: Sequence[int], fit: PixelFit | None = None) -> torch.Tensor:
    """A checked mask [F, H, W] at the canvas's pixel size (height, width).

    With `fit` (how the source image was fit), the mask is taken as drawn on that image: a mask of another size is
    first resized to the image (nearest, one warning line), then fit like the image. Without it (source tokens from
    a previous run) the canvas is the image.
    """
    mask = check_mask(mask)
    height, width = canvas
    image = (fit.height, fit.width) if fit is not None else (height, width)
    if tuple(mask.shape[1:]) != image:
        log.warning("warning: the mask is %dx%d but the image is %dx%d: resized to the image (nearest)",
                    mask.shape[2], mask.shape[1], image[1], image[0])
        mask = F.interpolate(mask.unsqueeze(1), size=image, mode="nearest-exact").squeeze(1)
    if fit is not None:
        mask = fit_mask(mask, width, height, fit.mode)
    return mask


def pad_for_outpaint(images: torch.Tensor, left: int, right: int, top: int, bottom: int,
                     fill: str = "edge") -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [F, H, W, C] -> (the canvas [F, H+top+bottom, W+left+right, C], its MASK [1, H', W'] = 1 on the added
    pixels). `fill` is what the added pixels hold: "edge" repeats the border pixels (the encoder, whose receptive
    field crosses the border, then sees a continuation of the picture, so the kept tokens next to it change least),
    "gray" is 0.5 (core's ImagePadForOutpaint). Either way they are only the source of tokens that are regenerated."""
    sides = rules.outpaint_sides(left, right, top, bottom)
    rules.choice("fill", fill, FILLS)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.numel() == 0:
        raise InputError(f"the image must be an IMAGE [frames, H, W, C], got shape {list(images.shape)}")
    x = images.float().permute(0, 3, 1, 2)
    if fill == "edge":
        x = F.pad(x, sides, mode="replicate")
    else:
        x = F.pad(x, sides, value=0.5)
    mask = torch.ones(1, *x.shape[-2:])
    mask[:, top:top + images.shape[1], left:left + images.shape[2]] = 0.0
    return x.permute(0, 2, 3, 1).contiguous(), mask


def _box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean of every (2r+1)^2 window of [F, H, W] (windows clipped at the border), in O(H W) for any radius:
    running sums along each axis."""
    for dim in (1, 2):
        n = x.shape[dim]
        padded = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), x], dim).cumsum(dim)
        index = torch.arange(n)
        hi, lo = (index + radius + 1).clamp(max=n), (index - radius).clamp(min=0)
        x = (padded.index_select(dim, hi) - padded.index_select(dim, lo)) / (hi - lo).to(x.dtype).view(
            *([-1] + [1] * (2 - dim)))
    return x


def repaint_weight(changed: torch.Tensor, pixel_frames: int, temporal_stride: int, spatial_stride: int,
                   feather: int) -> torch.Tensor:
    """Per pixel, how much of the repainted picture a composite takes [F, H, W]: 1 over the repainted tokens
    (`changed` [T, h, w] bool), falling linearly to 0 over `feather` pixels outside them, 0 beyond.

    Why outside: the decoder's receptive field reaches past a token's own pixels, so decoded pixels next to a
    repainted token differ from the source; a hard edge there would show. Feathering is per frame, not in time.
    """
    feather = rules.feather(feather)
    region = changed[frame_owner(pixel_frames, temporal_stride)].double()
    region = region.repeat_interleave(spatial_stride, 1).repeat_interleave(spatial_stride, 2)
    if feather == 0:
        return region.float()
    # Dilate by half the band, then average over the same window: 1 at the edge, 0 `feather` pixels out.
    radius = feather // 2
    near = (_box_mean(region, radius) > 0).double()
    return torch.maximum(region, _box_mean(near, radius)).float()


def composite(source: torch.Tensor, repainted: torch.Tensor, weight: torch.Tensor,
              fit: PixelFit | None = None) -> torch.Tensor:
    """IMAGE: the repainted pixels where `weight` [F, H, W] is 1, the source pixels (fit to the canvas like when
    they were encoded) where it is 0, blended between. Pixels of weight 0 are the source's exactly."""
    height, width = repainted.shape[1:3]
    if source.ndim == 3:
        source = source.unsqueeze(0)
    if tuple(source.shape[1:3]) != (height, width):
        source = fit_frames(source, width, height, fit.mode if fit is not None else "crop")
    if source.shape[0] != repainted.shape[0]:
        raise InputError(f"the source has {source.shape[0]} frames but the repainted clip has "
                         f"{repainted.shape[0]}: composite the clip onto the frames it was encoded from")
    w = weight.to(repainted.dtype).unsqueeze(-1)
    return (source[..., :3].to(repainted.dtype) * (1 - w) + repainted[..., :3] * w).contiguous()
