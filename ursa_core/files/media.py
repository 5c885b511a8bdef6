"""Pixels in and out: fitting images to the model size, writing PNG / MP4."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, OutputError
from .atomic import atomic_files
from .image_file import RESIZE_MODES, read_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
OUTPUT_SUFFIXES = (".mp4",) + IMAGE_SUFFIXES


def fit_frames(frames: torch.Tensor, width: int, height: int, mode: str = "crop") -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] in 0..1 -> [B, H', W', 3] at the target size (alpha dropped).

    crop: scale to cover, centre-crop; pad: scale to fit, pad with black; stretch: plain resize.
    """
    if mode not in RESIZE_MODES:
        raise InputError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise InputError(f"images must be [B, H, W, C] with C in 1, 3 or 4, got {list(frames.shape)}")
    x = frames[..., :3].float().clamp(0, 1)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    x = x.permute(0, 3, 1, 2)
    src_h, src_w = x.shape[-2:]
    if (src_h, src_w) == (height, width):
        return x.permute(0, 2, 3, 1).contiguous()
    if mode == "stretch":
        x = _resize(x, height, width)
    else:
        scale = (max if mode == "crop" else min)(height / src_h, width / src_w)
        new_h, new_w = max(1, round(src_h * scale)), max(1, round(src_w * scale))
        x = _resize(x, new_h, new_w)
        x = _center(x, height, width)
    return x.permute(0, 2, 3, 1).contiguous()


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _center(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop or zero-pad [B, C, h, w] to [B, C, height, width]."""
    h, w = x.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return x[..., top:top + height, left:left + width]
    out = x.new_zeros(*x.shape[:-2], height, width)
    src_t, src_l = max(top, 0), max(left, 0)
    dst_t, dst_l = max(-top, 0), max(-left, 0)
    ch, cw = min(h, height), min(w, width)
    out[..., dst_t:dst_t + ch, dst_l:dst_l + cw] = x[..., src_t:src_t + ch, src_l:src_l + cw]
    return out


def to_model_pixels(images: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] in 0..1 -> [1, 3, F, H, W] in [-1, 1], the tokenizer's input."""
    return (images.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1).contiguous()


def from_model_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> [B*F, H, W, 3] float32 in 0..1 on the CPU (ComfyUI IMAGE)."""
    x = ((pixels.float() + 1) / 2).clamp(0, 1)
    return x.permute(0, 2, 3, 4, 1).reshape(-1, *x.shape[-2:], 3).cpu().contiguous()


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> [1, H, W, 3] float32 in 0..1: the one reader of image files (`--image`, `--last-image`,
    `ursa batch` items, `ursa_core.load_image`), with image_file.read_rgb's rules for every mode and the pixel
    limit; a missing, unreadable or too large file is one InputError naming it."""
    return torch.from_numpy(read_rgb(path)).unsqueeze(0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """IMAGE [F, H, W, 3] 0..1 -> uint8, rounding to nearest."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def frame_paths(path: str | Path, frames: int) -> list[Path]:
    """`path` itself for a single frame, `stem_00000.png`, `stem_00001.png`... for several."""
    path = Path(path)
    if frames == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:05d}{path.suffix}") for i in range(frames)]


def write_png(images: torch.Tensor, path: str | Path, before_rename: Optional[Callable[[], None]] = None
              ) -> list[Path]:
    """One image file per frame (see frame_paths); all frames appear together or none do."""
    from PIL import Image

    arrays = to_uint8(images)
    paths = frame_paths(path, len(arrays))
    with atomic_files(paths, before_rename) as temps:
        for array, tmp in zip(arrays, temps):
            Image.fromarray(array).save(tmp)
    return paths


# x264 options that make an MP4's bytes a function of its frames. With x264's defaults (B-frames together with
# macroblock-tree rate control), writing the same frames again in a process that had done other work in between gave
# other bytes for 15 of 144 clips (46 of 720 re-encodes; decoded pixels off by up to 37/255), also with one thread,
# so x264 reads memory it has not written. Without B-frames (bframes=0) 0 of 720 differed, as with mbtree=0, which
# makes files 76 % larger on smooth video against 35 % (4 % on noisy video), at the same PSNR. threads=1 pins the
# thread count, on which x264's output depends, to one value on every machine (PyAV's default today).
# Measured with `python benchmarks/bench_mp4.py` (docs/PERFORMANCE.md, "MP4 writing").
X264_REPRODUCIBLE = {"threads": "1", "x264-params": "bframes=0"}


def write_mp4(images: torch.Tensor, path: str | Path, fps: float = 12.0, quality_crf: int = 17,
              before_rename: Optional[Callable[[], None]] = None) -> Path:
    """H.264 yuv420p MP4 through PyAV (frames are multiples of 8 pixels, so no resizing happens); the same frames
    give the same bytes (X264_REPRODUCIBLE).

    The file is checked (it opens and holds every frame) before it replaces anything at `path`.
    """
    import av

    path = Path(path)
    arrays = to_uint8(images)
    height, width = arrays.shape[1:3]
    with atomic_files([path], before_rename) as (tmp,):
        try:
            with av.open(str(tmp), mode="w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {**X264_REPRODUCIBLE, "crf": str(quality_crf)}
                for array in arrays:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
                container.mux(stream.encode())
        except av.FFmpegError as exc:
            raise OutputError(f"{path}: the video encoder failed ({exc})") from None
        written = count_video_frames(tmp)
        if written != len(arrays):
            raise OutputError(f"{path}: the encoder wrote {written} of {len(arrays)} frames")
    return path


def count_video_frames(path: str | Path) -> int:
    """Decode-free frame count of a video file (0 for a file that holds no readable video)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except av.FFmpegError:
        return 0


def write_frames(images: torch.Tensor, out: str | Path, fps: float,
                 before_rename: Optional[Callable[[], None]] = None) -> Sequence[Path]:
    """Pick the writer from the extension: .png/.jpg (one file per frame) or .mp4. `before_rename` runs when the
    files are complete, before they appear (ursa_core.atomic.atomic_files)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".mp4":
        return [write_mp4(images, out, fps, before_rename=before_rename)]
    if suffix in IMAGE_SUFFIXES:
        return write_png(images, out, before_rename)
    raise InputError(f"--out {out}: unsupported extension {suffix!r}; use .png or .mp4")
