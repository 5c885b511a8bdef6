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
from ..checkpoint.defaults import ModelDefaults
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


def attention_help() -> str:
    """--attention's help: the backends of the attention registry, which needs torch; without it, help says so."""
    try:
        from ..attention import backends as registry
    except (ImportError, OSError):
        return "auto or a backend name; the list needs torch installed (default: %(default)s)"
    return f"{', '.join(registry.names())}; only those this machine runs are accepted (default: %(default)s)"

# The flags' defaults where no checkpoint sets one (size, steps and motion are the checkpoint's: request()).
# `ursa batch` takes an evaluation preset's values instead where it has one (ursa_core.batch.presets).
DEFAULTS = {"negative": "", "frames": 1, "guidance": 7.0, "dtype": "auto", "samples": 1}
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


@dataclass(frozen=True)
class Request:
    """One generation the command line asks for: its sampling settings and what conditions it."""
    settings: GenerationSettings
    negative: str = ""
    image: Optional[str] = None        # first frame (image-to-video)
    last_image: Optional[str] = None   # last frame (interpolation)
    resize: str = "crop"


def speed_options(args: argparse.Namespace) -> SpeedOptions:
    from ..runtime.speed import SpeedOptions

    return SpeedOptions(attention=args.attention, compile=args.compile, weight_dtype=args.weight_dtype,
                        low_vram="stream" if args.low_vram else "off", blocks_on_gpu=args.blocks_on_gpu,
                        vq_device=args.vq_device, text_device=args.text_device)


def request(flags: Mapping[str, Any], defaults: ModelDefaults) -> Request:
    """The flag values (`vars(args)`, or a batch item's over them) as one Request; a size or step count left out is
    the checkpoint's default (checkpoint/defaults.py), a video's motion score the reference's."""
    from ..sampling.settings import GenerationSettings

    frames = flags["frames"]
    settings = GenerationSettings(
        frames=frames, height=defaults.height if flags["height"] is None else flags["height"],
        width=defaults.width if flags["width"] is None else flags["width"],
        steps=defaults.steps(frames) if flags["steps"] is None else flags["steps"], guidance=flags["guidance"],
        guidance_trunc=flags["guidance_trunc"], shift=flags["shift"], seed=flags["seed"], sampler=flags["sampler"],
        motion=rules.default_motion(frames) if flags["motion"] is None else flags["motion"])
    return Request(settings, flags["negative"], flags.get("image"), flags.get("last_image"), flags["resize"])


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
