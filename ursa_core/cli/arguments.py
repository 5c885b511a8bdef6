"""The command line's flags: their argparse types (each a rule of ursa_core.rules, so a bad value is one line before
anything runs) and the typed objects built from them once, below which no argparse Namespace travels.

Importing this module needs no torch (the parser is built from it for `ursa --help` before torch is known to be
there): what needs torch is imported where it is used."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .. import rules
from ..checkpoint.defaults import ModelDefaults, check_preset, resolve
from ..errors import InputError

if TYPE_CHECKING:
    from ..runtime.speed import SpeedOptions
    from ..sampling.settings import GenerationSettings
    from ..visual_tokenizer.geometry import VisualGeometry

FRAMES = rules.arg_type(rules.frames, int)
SIZE = {name: rules.arg_type(lambda v, n=name: rules.size(n, v), int) for name in ("height", "width")}
STEPS = rules.arg_type(rules.steps, int)
SEED = rules.arg_type(rules.seed, int)
GUIDANCE = rules.arg_type(lambda v: rules.guidance(v, "cfg"), float)  # the --cfg flag
GUIDANCE_TRUNC = rules.arg_type(lambda v: rules.unit("guidance_trunc", v), float)
SHIFT = rules.arg_type(lambda v: rules.path_param("shift", v), float)
MOTION = rules.arg_type(rules.motion, float)
DTYPE = rules.arg_type(rules.dtype, str)
ATTENTION = rules.arg_type(rules.attention, str)
SAMPLER = rules.arg_type(rules.sampler, str)
WEIGHT_DTYPE = rules.arg_type(rules.weight_dtype, str)
BLOCKS = rules.arg_type(rules.blocks_on_gpu, int)
PARALLEL = rules.arg_type(lambda v: rules.choice("parallel", v, rules.PARALLEL_MODES), str)
SAMPLES = rules.arg_type(lambda v: rules.integer("samples", v, 1, rules.MAX_SAMPLES), int)
PLACEMENT = {name: rules.arg_type(lambda v, n=name: rules.placement(n, v), str)
             for name in ("vq_device", "text_device")}
PRESET = rules.arg_type(check_preset, str)


def lora_flag(text: str) -> tuple[str, float]:
    """--lora FILE[:STRENGTH]: a strength after the last colon when it is a number (a FILE may hold colons)."""
    path, _, tail = text.rpartition(":")
    try:
        value = float(tail) if path else None
    except ValueError:
        value = None
    if value is None:
        path, value = text, 1.0
    try:
        return path, rules.lora_strength(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def attention_help() -> str:
    """--attention's help: the backends of the attention registry, which needs torch; without it, help says so."""
    try:
        from ..attention import backends as registry
    except (ImportError, OSError):
        return "auto or a backend name; the list needs torch installed (default: %(default)s)"
    return f"{', '.join(registry.names())}; only those this machine runs are accepted (default: %(default)s)"


# The flags' defaults where no checkpoint sets one (frames, size, steps, cfg and motion are the model's: request()).
# `ursa batch` takes an evaluation preset's values instead where it has one (ursa_core.batch.presets).
DEFAULTS = {"negative": "", "dtype": "auto", "samples": 1}
# The flags a preset sets (by their argparse names: --cfg is `guidance`); given on the command line, they win.
PRESET_OPTIONS = ("samples", "height", "width", "steps", "guidance", "frames", "negative", "motion", "dtype")


@contextlib.contextmanager
def warnings_on_stderr():
    """ursa_core's logged warnings (a prompt that will be cut, ...) as plain `warning: ...` lines on the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("ursa_core")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


OUTPAINT = rules.arg_type(rules.outpaint, str)
STRENGTH = rules.arg_type(rules.strength, float)
GROW = rules.arg_type(rules.grow, int)
FEATHER = rules.arg_type(rules.feather, int)
REPAINT_FLAGS = ("mask", "outpaint", "strength")  # what makes --image / --video the canvas of a repaint


@dataclass(frozen=True)
class RepaintFlags:
    """--image/--video as the canvas of a repaint: what to repaint (--mask, --outpaint; none: everything) and
    how strongly; --composite pastes the result onto the source pixels, feathered over that many pixels."""
    source: str
    mask: Optional[str] = None
    outpaint: Optional[tuple[int, int, int, int]] = None
    strength: float = 1.0
    grow: int = 0
    composite: Optional[int] = None


@dataclass(frozen=True)
class Request:
    """One generation the command line asks for: its sampling settings and what conditions it."""
    settings: GenerationSettings
    negative: str = ""
    image: Optional[str] = None        # first frame (image-to-video)
    last_image: Optional[str] = None   # last frame (interpolation)
    resize: str = "crop"
    repaint: Optional[RepaintFlags] = None
    from_model: tuple[str, ...] = ()  # the settings the model's defaults (or --preset) filled in


def repaint_flags(flags: Mapping[str, Any]) -> Optional[RepaintFlags]:
    """The repaint a command line asks for, or None; a repaint flag without a source (or a source of both kinds,
    or a video without a repaint flag) is one line."""
    asked = [name for name in (*REPAINT_FLAGS, "grow", "composite") if flags.get(name) not in (None, 0)]
    video = flags.get("video")
    if video is None and not asked:
        return None
    if video is not None and flags.get("image"):
        raise InputError("--image and --video both given: a repaint has one source")
    source = video or flags.get("image")
    if source is None:
        raise InputError(f"--{asked[0]} repaints a source: give --image or --video")
    source_flag = "--image" if video is None else "--video"
    if not any(flags.get(name) is not None for name in REPAINT_FLAGS):
        raise InputError(f"{source_flag} is the source of a repaint here: say what to repaint with --mask, "
                         f"--outpaint or --strength (the whole canvas)")
    if flags.get("last_image"):
        raise InputError("--last-image conditions a clip made from noise; a repaint keeps its source's frames")
    for flag, path in ((source_flag, source), ("--mask", flags.get("mask"))):
        if path and not Path(path).is_file():
            raise InputError(f"{flag}: file not found: {path}")
    return RepaintFlags(source, flags.get("mask"), flags.get("outpaint"),
                        1.0 if flags.get("strength") is None else flags["strength"], flags.get("grow") or 0,
                        flags.get("composite"))


def speed_options(args: argparse.Namespace) -> SpeedOptions:
    from ..runtime.speed import SpeedOptions

    return SpeedOptions(attention=args.attention, compile=args.compile, weight_dtype=args.weight_dtype,
                        low_vram="stream" if args.low_vram else "off", blocks_on_gpu=args.blocks_on_gpu,
                        vq_device=args.vq_device, text_device=args.text_device)


def request(flags: Mapping[str, Any], defaults: ModelDefaults, image_output: bool = False,
            repaint: Optional[RepaintFlags] = None) -> Request:
    """The flag values (`vars(args)`, or a batch item's over them) as one Request. A setting left out follows the
    model (checkpoint/defaults.py: its row, after --preset), except that an image output (`--out x.png`, an image
    benchmark) asks for one frame; a video's motion score is the reference's. `repaint`: repaint_flags(flags) as
    the caller read it (None: no repaint; `ursa batch` has none), whose source is then the canvas, not an --image."""
    from ..sampling.settings import GenerationSettings

    frames = flags["frames"] if flags["frames"] is not None else (1 if image_output else None)
    used = resolve(defaults, flags.get("preset") or "none", frames=frames, height=flags["height"],
                   width=flags["width"], steps=flags["steps"], guidance=flags["guidance"])
    settings = GenerationSettings(
        frames=used.frames, height=used.height, width=used.width, steps=used.steps, guidance=used.guidance,
        guidance_trunc=flags["guidance_trunc"], shift=flags["shift"], seed=flags["seed"], sampler=flags["sampler"],
        motion=rules.default_motion(used.frames) if flags["motion"] is None else flags["motion"])
    return Request(settings, flags["negative"], None if repaint else flags.get("image"), flags.get("last_image"),
                   flags["resize"], repaint=repaint, from_model=used.filled)


def check_images(run: Request, geometry: VisualGeometry) -> None:
    """--image / --last-image: a last frame needs a video (interpolation keeps first and last apart), and both
    files must exist; checked before any weight loads."""
    from ..path.schedule import interpolation_starts

    latent_frames = run.settings.latent_shape(geometry)[0]
    if run.last_image:
        try:
            interpolation_starts(latent_frames, 1.0)   # the schedule's rule for a first and a last frame
        except InputError:
            raise InputError(f"--last-image needs a video: frames={run.settings.frames} is an image; use --frames 5 "
                             f"or more") from None
    for flag, image in (("--image", run.image), ("--last-image", run.last_image)):
        if image and not Path(image).is_file():
            raise InputError(f"{flag}: image not found: {image}")


def check_first_frame(run: Request) -> None:
    """--image as the first frame (once it was read): a held first frame of a one-frame clip leaves nothing to make,
    which the core would answer with the image itself; here it is a mistake, said in one line."""
    if run.image and run.settings.frames == 1:
        raise InputError("--image is the first frame of a video: use --frames 5 or more, or repaint the picture with "
                         "--mask, --outpaint or --strength")
