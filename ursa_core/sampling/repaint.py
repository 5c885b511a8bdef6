"""Paint with a mask: inpainting, outpainting and region re-roll of images and videos with the one model.

The transformer has no timestep input: it reads how noisy each token is from the tokens. So a repaint is a
generation whose start-time map comes from a mask (path/masks.py): kept tokens start at 1 and are held exactly,
repainted ones start from noise, partly repainted ones start from their source token noised to their level. The
source tokens of the whole canvas come from encoding an image or video (padded for outpainting) or from a previous
run. Every check here runs before a model loads; only `encode_canvas` needs the visual tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import rules
from ..checkpoint.loader import URSAModel
from ..errors import InputError
from ..files.media import VIDEO_SUFFIXES, load_image, load_video
from ..path.masks import mask_start_times, match_frames
from ..path.schedule import ScheduledTokens, as_start_times
from ..visual_tokenizer.canvas import PixelFit, composite, mask_for_canvas, pad_for_outpaint, read_mask, repaint_weight
from ..visual_tokenizer.codec import encode_images
from ..visual_tokenizer.geometry import VisualGeometry
from .generate import Generation, StepInfo, generate
from .settings import GenerationSettings


@dataclass(frozen=True)
class Canvas:
    """The source pixels of a repaint at their own size (padded when outpainting) and the mask drawn on them
    ([1 or F, H, W], 1 = repaint): what is known before any model loads."""
    pixels: torch.Tensor
    mask: torch.Tensor

    @property
    def frames(self) -> int:
        return self.pixels.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the source pixels."""
        return tuple(self.pixels.shape[1:3])


def read_pixels(source) -> torch.Tensor:
    """An IMAGE tensor ([H, W, C] or [F, H, W, C] in 0..1) or an image/video file -> [F, H, W, 3]."""
    if isinstance(source, (str, Path)):
        source = load_video(source, rules.MAX_FRAMES) if Path(source).suffix.lower() in VIDEO_SUFFIXES \
            else load_image(source)
    pixels = torch.as_tensor(source)
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.ndim != 4 or pixels.shape[-1] not in (1, 3, 4) or pixels.numel() == 0:
        raise InputError(f"the source must be an IMAGE [frames, H, W, C] (C 1, 3 or 4), got shape "
                         f"{list(pixels.shape)}")
    pixels = pixels[..., :3].float()
    return pixels.expand(*pixels.shape[:-1], 3)  # one grey channel as three


def build_canvas(pixels: torch.Tensor, mask=None, outpaint: Optional[Sequence[int]] = None,
                 fill: str = "edge") -> Canvas:
    """The canvas of a repaint: the mask (a [F|1, H, W] tensor; files are read by the callers) checked against the
    pixels (its frames: one or one per frame; its size: resized to the image with one warning line), then both
    padded by `outpaint` (left, right, top, bottom pixels; the added pixels are repainted). No mask and no padding repaints everything (a re-roll at some strength)."""
    if mask is None:  # outpainting alone keeps the picture; no mask at all re-rolls all of it
        mask = torch.full((1, *pixels.shape[1:3]), 0.0 if outpaint is not None else 1.0)
    mask = mask_for_canvas(mask, pixels.shape[1:3])
    match_frames(mask, pixels.shape[0])
    if outpaint is not None:
        left, right, top, bottom = outpaint
        pixels, added = pad_for_outpaint(pixels, left, right, top, bottom, fill)
        mask = torch.maximum(F.pad(mask, (left, right, top, bottom)), added)
    return Canvas(pixels, mask)


def canvas_size(canvas: Canvas, geometry: VisualGeometry, width: Optional[int], height: Optional[int],
                what: str = "the source") -> tuple[int, int]:
    """(width, height) of the generation: as given, else the source's own size (after padding), which must then
    be a multiple of the tokenizer's stride."""
    if width is not None and height is not None:
        return width, height
    src_h, src_w = canvas.size
    stride = geometry.spatial_stride
    if src_w % stride or src_h % stride:
        raise InputError(f"{what} is {src_w}x{src_h} pixels, not a multiple of {stride} (the tokenizer's stride): "
                         f"give width and height (the source is fit to them)")
    return (src_w if width is None else width), (src_h if height is None else height)


def encode_canvas(model: URSAModel, canvas: Canvas, width: int, height: int,
                  resize: str = "crop") -> tuple[torch.Tensor, PixelFit]:
    """The canvas's source tokens [1, T, h, w] at width x height, and how its pixels were fit there."""
    if model.visual_tokenizer is None:
        raise InputError(f"{model.folder}: this checkpoint has no vae/ folder, so the source cannot be encoded")
    tokens = encode_images(model.visual_tokenizer, canvas.pixels, width, height, resize)
    return tokens, PixelFit(canvas.size[1], canvas.size[0], resize)


def mask_schedule(source_tokens: torch.Tensor, mask: torch.Tensor, temporal_stride: int, spatial_stride: int, *,
                  strength: float = 1.0, grow: int = 0, fit: Optional[PixelFit] = None,
                  keyframes: Optional[ScheduledTokens] = None, identity: Optional[dict] = None) -> ScheduledTokens:
    """Start times and given tokens of a repaint of `source_tokens` [B, T, h, w] (the whole canvas) by `mask`
    (drawn on the source pixels of `fit`, or on the canvas itself), combined with a frame schedule's keyframes
    (token by token the later start; on their frames the keyframes' tokens are given)."""
    source_tokens = torch.as_tensor(source_tokens)
    if source_tokens.ndim != 4 or source_tokens.dtype.is_floating_point:
        raise InputError(f"source tokens must be an integer tensor [B, T, h, w], got {source_tokens.dtype} "
                         f"{list(source_tokens.shape)}")
    latent = tuple(source_tokens.shape[1:])
    canvas = (latent[1] * spatial_stride, latent[2] * spatial_stride)
    mask = mask_for_canvas(mask, canvas, fit)
    starts = mask_start_times(mask, latent, temporal_stride, spatial_stride, strength, grow)
    given = source_tokens.long().clone()
    if keyframes is not None:
        frame_starts = as_start_times(keyframes.schedule, latent)
        starts = starts.combine(frame_starts)
        frames = frame_starts.given_frames()
        if frames and keyframes.given is not None:
            given[:, frames] = keyframes.given[:, frames].to(given.device)
    return ScheduledTokens(starts, given, identity, fit)


def composite_repaint(source_pixels: torch.Tensor, images: torch.Tensor, scheduled: ScheduledTokens,
                      temporal_stride: int, spatial_stride: int, feather: int) -> torch.Tensor:
    """The decoded repaint `images` pasted onto `source_pixels`: the source's own pixels wherever no token was
    repainted (held), blended over `feather` pixels beyond the repainted tokens (visual_tokenizer.canvas)."""
    starts = scheduled.schedule
    changed = ~starts.held().view(starts.latent_shape)
    weight = repaint_weight(changed, images.shape[0], temporal_stride, spatial_stride, feather)
    return composite(source_pixels, images, weight, scheduled.source_fit)


def _sized(model: URSAModel, canvas: Canvas, settings: Optional[GenerationSettings], changes: dict) -> dict:
    """`changes` with the frames of a pixel-source repaint (the source's) and its size: width and height as given
    (keywords, or the settings object), else the source's own size."""
    if changes.get("frames", canvas.frames) != canvas.frames:
        raise InputError(f"frames={changes['frames']} but the source has {canvas.frames} frame(s): a repaint makes "
                         f"as many frames as its source")
    given = {name: changes.get(name, getattr(settings, name, None)) for name in ("width", "height")}
    width, height = canvas_size(canvas, model.geometry, given["width"], given["height"])
    return {**changes, "frames": canvas.frames, "width": width, "height": height}


@torch.no_grad()
def repaint(model: URSAModel, prompt: str | Sequence[str] = "", negative_prompt: str | Sequence[str] | None = None,
            settings: Optional[GenerationSettings] = None, *, image=None, video=None, tokens=None, mask=None,
            strength: float = 1.0, grow: int = 0, outpaint: Optional[Sequence[int]] = None, resize: str = "crop",
            fill: str = "edge", keyframes: Optional[ScheduledTokens] = None,
            callback: Optional[Callable[[StepInfo], None]] = None, parallel=None, **changes) -> Generation:
    """Repaint the region `mask` marks (1 = repaint; a MASK tensor or an image/video file, white = repaint) of one
    source: `image` or `video` (IMAGE tensors or files) or `tokens` [B, T, h, w] from a previous run.

    `strength` scales the mask (a token of mask level r starts at 1 - strength * r: 1 regenerates, 0.5 re-rolls
    half way); `grow` widens the repainted region by that many tokens; `outpaint` (left, right, top, bottom pixels)
    pads a pixel source and repaints the padding (`fill`: see visual_tokenizer.canvas.pad_for_outpaint). Without a
    mask the whole canvas is repainted at `strength`. A pixel source sets the frames; width and height default to
    its size (it is fit to them by `resize`). Tokens outside the mask are the source tokens exactly; a mask that
    repaints nothing returns them without a model call. Other keywords are `generate`'s.
    """
    sources = [name for name, value in (("image", image), ("video", video), ("tokens", tokens)) if value is not None]
    if len(sources) != 1:
        raise InputError(f"a repaint needs exactly one source (image, video or tokens), got {sources or 'none'}")
    if isinstance(mask, (str, Path)):  # read once, for every source: a mask video only up to the frame cap
        mask = read_mask(mask, rules.MAX_FRAMES)
    geometry = model.geometry
    if tokens is not None:
        if outpaint is not None:
            raise InputError("outpaint pads pixels: give the source as an image or video, not tokens")
        source = torch.as_tensor(tokens)
        if source.ndim != 4:
            raise InputError(f"source tokens must be [B, T, h, w], got shape {list(source.shape)}")
        if mask is None:
            mask = torch.ones(1, source.shape[2] * geometry.spatial_stride, source.shape[3] * geometry.spatial_stride)
        fit, frames = None, geometry.pixel_frames(source.shape[1])
        changes = {**changes, "frames": frames, "height": source.shape[2] * geometry.spatial_stride,
                   "width": source.shape[3] * geometry.spatial_stride}
    else:
        canvas = build_canvas(read_pixels(image if image is not None else video), mask, outpaint, fill)
        changes = _sized(model, canvas, settings, changes)
        source, fit = encode_canvas(model, canvas, changes["width"], changes["height"], resize)
        mask = canvas.mask
    scheduled = mask_schedule(source, mask, geometry.temporal_stride, geometry.spatial_stride, strength=strength,
                              grow=grow, fit=fit, keyframes=keyframes)
    settings = GenerationSettings.build(settings, **changes)
    return generate(model, prompt, negative_prompt, settings, schedule=scheduled.schedule,
                    given_tokens=scheduled.given, callback=callback, parallel=parallel)
