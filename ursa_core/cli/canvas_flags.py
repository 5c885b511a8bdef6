"""`ursa generate --image/--video ... --mask/--outpaint/--strength`: the canvas of a repaint read and checked before
the model loads, its tokens sampled, and the result optionally pasted back onto the source pixels."""
from __future__ import annotations

from typing import Any, Optional

import torch

from .. import rules
from ..checkpoint.loader import URSAModel
from ..errors import InputError
from ..files.media import VIDEO_SUFFIXES, count_video_frames, load_image, load_video
from ..path.schedule import ScheduledTokens
from ..sampling.generate import generate
from ..sampling.repaint import Canvas, build_canvas, canvas_size, composite_repaint, encode_canvas, mask_schedule
from ..visual_tokenizer.canvas import read_mask
from ..visual_tokenizer.geometry import VisualGeometry
from .arguments import RepaintFlags, Request


def _frame_count(path: str) -> int:
    """Frames of a file: 1 for an image, a video's count without decoding it."""
    if not path.lower().endswith(VIDEO_SUFFIXES):
        return 1
    count = count_video_frames(path)
    if count == 0:
        raise InputError(f"{path}: not a video PyAV can read, or it holds no frames")
    return count


def source_frames(flags: RepaintFlags, frames: Optional[int]) -> int:
    """The frames of the canvas: --frames (the source's first frames), else all of a video's, which must then be
    1 + 4k."""
    if not flags.source.lower().endswith(VIDEO_SUFFIXES):
        if frames not in (None, 1):
            raise InputError(f"--image is the canvas of one picture: --frames {frames} needs --video")
        return 1
    have = _frame_count(flags.source)
    if frames is not None and frames > have:
        raise InputError(f"--frames {frames} but the video {flags.source} has {have} frames")
    if frames is None:
        try:
            rules.frames(have)
        except InputError:
            fit = min(rules.pixel_frames(rules.latent_frames(have)), rules.MAX_FRAMES)  # the most frames, 1 + 4k
            raise InputError(f"the video {flags.source} has {have} frames; URSA makes 1 + 4k: pass --frames {fit} "
                             f"to take its first {fit}") from None
    return have if frames is None else frames


def read_canvas(flags: RepaintFlags, frames: Optional[int], resize: str) -> Canvas:
    """The source pixels (the first `frames`) and the mask, checked against each other, padded by --outpaint."""
    count = source_frames(flags, frames)
    is_video = flags.source.lower().endswith(VIDEO_SUFFIXES)
    pixels = load_video(flags.source, count) if is_video else load_image(flags.source)
    mask = None
    if flags.mask is not None:
        mask_frames, source_total = _frame_count(flags.mask), _frame_count(flags.source)
        if mask_frames not in (1, source_total):
            raise InputError(f"the mask has {mask_frames} frames but the video has {source_total}: give one mask "
                             f"for every frame, or an image for all of them")
        mask = read_mask(flags.mask, count)
    return build_canvas(pixels, mask, flags.outpaint)


def canvas_flags(flags: dict, canvas: Canvas, geometry: VisualGeometry) -> dict[str, Any]:
    """The flags with the canvas's frames, and its own size where --width/--height are not given."""
    source = "--video" if canvas.frames > 1 else "--image"
    width, height = canvas_size(canvas, geometry, flags.get("width"), flags.get("height"),
                                f"{source} (after --outpaint)" if flags.get("outpaint") else source)
    return {**flags, "frames": canvas.frames, "width": width, "height": height}


def repaint_tokens(model: URSAModel, run: Request, canvas: Canvas, prompt: str, callback=None,
                   parallel=None) -> tuple[torch.Tensor, ScheduledTokens]:
    """The repainted tokens and the schedule that made them (which tokens changed, how the source was fit)."""
    settings, flags = run.settings, run.repaint
    source, fit = encode_canvas(model, canvas, settings.width, settings.height, run.resize)
    scheduled = mask_schedule(source, canvas.mask, model.geometry.temporal_stride, model.geometry.spatial_stride,
                              strength=flags.strength, grow=flags.grow, fit=fit)
    tokens = generate(model, prompt, run.negative, settings, schedule=scheduled.schedule,
                      given_tokens=scheduled.given, callback=callback, parallel=parallel).tokens
    return tokens, scheduled


def composite_onto_source(model: URSAModel, images: torch.Tensor, canvas: Canvas, scheduled: ScheduledTokens,
                          feather: int) -> torch.Tensor:
    """--composite: the source's own pixels wherever no token was repainted, blended over `feather` pixels."""
    geometry = model.geometry
    return composite_repaint(canvas.pixels, images, scheduled, geometry.temporal_stride, geometry.spatial_stride,
                             feather)
