"""Every check of a `generate` run that can be made before a weight loads: the rules of ursa_core.rules on each
argument, the sizes against the checkpoint's strides and the memory estimate, all from the small json files."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from . import memory, rules
from .config import TransformerConfig
from .errors import InputError
from .geometry import VisualGeometry
from .checkpoint import check_layout, read_geometry, resolve_dtype
from .tiny import is_tiny


def checkpoint_rules(folder: Path) -> tuple[TransformerConfig, VisualGeometry]:
    """The transformer config and the tokenizer's frame/size rules, read from json (no weights)."""
    check_layout(folder)
    return TransformerConfig.from_json(folder / "transformer" / "config.json"), read_geometry(folder / "vae")


def check_generate_args(args: argparse.Namespace, folder: Path) -> argparse.Namespace:
    """`args` with the defaults per tokenizer filled in, or an InputError / CheckpointError naming the first bad
    value; nothing is loaded. Raises the memory refusal too (ursa_core.memory)."""
    device = rules.device(args.device)
    dtype = resolve_dtype(rules.dtype(args.dtype), device)
    rules.attention(args.attention, device)
    rules.sampler(args.sampler, device)
    config, geometry = checkpoint_rules(Path(folder))
    tiny = args.model == "tiny" or is_tiny(folder)
    default_height, default_width = rules.default_size(geometry.image_only, tiny)
    height = default_height if args.height is None else args.height
    width = default_width if args.width is None else args.width
    latent = geometry.latent_shape(args.frames, height, width)
    if args.last_image and latent[0] < 2:
        raise InputError(f"--last-image needs a video: frames={args.frames} is an image; use --frames 5 or "
                               f"more")
    for flag, image in (("--image", args.image), ("--last-image", args.last_image)):
        if image and not Path(image).is_file():
            raise InputError(f"{flag}: image not found: {image}")
    steps = rules.default_steps(args.frames, tiny) if args.steps is None else args.steps
    motion = rules.default_motion(args.frames) if args.motion is None else args.motion
    need = memory.estimate(config, latent[0] * latent[1] * latent[2], dtype=dtype, device_type=device.type,
                           cfg_branches=2 if args.cfg > 1 else 1, low_vram=args.low_vram,
                           math_attention=args.attention == "math", blocks_on_gpu=args.blocks_on_gpu,
                           fp8_weights=args.weight_dtype != "default",
                           embeddings_on_device=args.text_device in ("default", str(device)))
    memory.check_fits(need, device, f"--frames {args.frames} at {width}x{height}", low_vram=args.low_vram)
    return argparse.Namespace(**{**vars(args), "height": height, "width": width, "steps": steps, "motion": motion})


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
