"""Reading image files: every mode Pillow opens, to RGB float32 in 0..1, within a pixel limit checked from the header
before any pixel is decoded. Pillow and numpy only (no torch): files/media.py hands the pixels on as a tensor, and the
CLI's help reads the limit before torch is known to be installed."""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError

RESIZE_MODES = ("crop", "pad", "stretch")   # how an image fits the frame (media.fit_frames)
# Twice the largest frame per side (rules.MAX_SIZE, 4096), so every image that matters at the largest size is read
# while the decode stays near 2 GB (~30 bytes a pixel: decoded, as float, resized). ursa's own limit rather than
# Pillow's MAX_IMAGE_PIXELS, a global a host may raise or switch off; below Pillow's default, so Pillow never warns.
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE ** 2
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")   # one band wider than 8 bits


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file -> [H, W, 3] float32 in 0..1; a missing, unreadable or too large file is one InputError naming
    it.

    Every mode Pillow opens: 8-bit modes / 255; 16-bit (I;16, I;16B, ...) and 32-bit integer (I) / 65535, as Pillow
    opens 16-bit PGM/PPM and some TIFFs as I (values outside 0..65535 clamp); float (F) clamped to 0..1, NaN as 0;
    1, P, CMYK, YCbCr, LAB through Pillow's conversion to RGB (16-bit RGB PNGs arrive as 8-bit RGB from Pillow).
    Transparency (an alpha band, a palette or tRNS entry) is composited over black, the colour `pad` fills with:
    the colour stored under transparent pixels is not what a viewer shows. ComfyUI's LoadImage drops alpha instead
    (it hands it over as a MASK). EXIF orientation is applied; an animation gives its first frame.
    """
    from PIL import ImageOps

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    img = _open_within_limit(path)
    try:
        with img:
            return _rgb_pixels(ImageOps.exif_transpose(img))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:   # corrupt or truncated data, found while decoding
        raise InputError(f"image {path}: {getattr(exc, 'strerror', None) or exc}") from None


def check_pixels(width: int, height: int) -> None:
    """An image's size (from its header) against MAX_IMAGE_PIXELS."""
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{width}x{height} = {width * height:,} pixels is more than the {MAX_IMAGE_PIXELS:,} "
                         f"({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}) ursa reads; scale it down first")


def _rgb_pixels(img) -> np.ndarray:
    """[H, W, 3] float32 in 0..1 for any Pillow mode (the rules are read_rgb's)."""
    if img.mode in WIDE_GREY_MODES:
        raw = np.asarray(img)
        grey = raw.astype(np.float32) / (1.0 if img.mode == "F" else 65535.0)
        rgb = np.repeat(np.clip(np.nan_to_num(grey, nan=0.0), 0, 1)[..., None], 3, axis=2)
        if img.mode != "F" and "transparency" in img.info:   # 16-bit grey PNG with a tRNS value
            rgb *= (raw != img.info["transparency"])[..., None]
        return rgb
    bands = img.getbands()
    if "A" in bands or "a" in bands or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3] * rgba[..., 3:]
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _open_within_limit(path: Path):
    """Image.open (which reads only the header) with ursa's pixel limit checked on the declared size."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # the limit that applies is checked below
        try:
            img = Image.open(path)
        except Image.DecompressionBombError:
            _refuse_size(path, _header_size(path))
        except UnidentifiedImageError:
            raise InputError(f"image {path}: not an image Pillow can read") from None
        except OSError as exc:
            raise InputError(f"image {path}: {exc.strerror or exc}") from None
    try:
        _check_size(path, img.size)
    except InputError:
        img.close()
        raise
    return img


def _check_size(path: Path, size: tuple[int, int]) -> None:
    """check_pixels, the message naming the file."""
    try:
        check_pixels(*size)
    except InputError as exc:
        raise InputError(f"image {path}: {exc}") from None


def _refuse_size(path: Path, size: tuple[int, int] | None) -> None:
    from PIL import Image

    if size is not None:
        _check_size(path, size)
    shown = "x".join(map(str, size)) if size else "its size"
    raise InputError(f"image {path}: {shown} is over Pillow's decompression-bomb limit of "
                     f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS, set by this program)")


def _header_size(path: Path) -> tuple[int, int] | None:
    """The size an image's header declares, read by Pillow's format plugins without Image.open's decompression-bomb
    check, which refuses before telling the size."""
    from PIL import Image

    Image.init()
    with open(path, "rb") as handle:
        prefix = handle.read(16)
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            try:
                accepted = accept(prefix) if accept else True
                if accepted and not isinstance(accepted, str):   # a str is Pillow's "not this format" message
                    handle.seek(0)
                    return tuple(factory(handle, str(path)).size)
            except (SyntaxError, IndexError, TypeError, ValueError, OSError, struct.error):
                continue   # not this plugin's format: the next one (as Image.open does)
    return None
