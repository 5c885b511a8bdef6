"""The README's main job: `python -m ursa_core generate ...` end to end (load, condition, sample, decode, write)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

from . import rules
from .acceleration import accelerate
from .codec import decode_images, encode_images
from .errors import InputError
from .generate import StepInfo, generate
from .media import OUTPUT_SUFFIXES, load_image, write_frames
from .model import URSAModel, load_model
from .preflight import check_generate_args
from .schedule import FrameSchedule
from .tiny import TINY_LABEL, is_tiny


def encode_image(model: URSAModel, path: str, width: int, height: int, mode: str) -> torch.Tensor:
    """An image file -> its single latent frame of tokens [1, 1, h, w] (a 1-frame clip for the video tokenizer)."""
    if model.vae is None:
        raise InputError(f"{model.folder}: this checkpoint has no vae/ folder, so images cannot be encoded")
    return encode_images(model.vae, load_image(path), width, height, mode)


def conditioning(model: URSAModel, args, latent_frames: int, width: int, height: int):
    """Schedule and given tokens from --image / --last-image."""
    if not args.image and not args.last_image:
        return None, None
    if latent_frames < 2 and args.last_image:
        raise InputError(f"--last-image needs a video: frames={args.frames}, use --frames 5 or more")
    given = torch.zeros(1, latent_frames, height // model.geometry.spatial_stride,
                        width // model.geometry.spatial_stride, dtype=torch.long)
    starts = {}
    for index, path in ((0, args.image), (latent_frames - 1, args.last_image)):
        if path:
            given[:, index] = encode_image(model, path, width, height, args.resize)[:, 0]
            starts[index] = 1.0
    return FrameSchedule.keyframes(latent_frames, starts), given


def check_output_path(out: str) -> None:
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {out}: unsupported extension {suffix!r}; use .png or .mp4")


class ProgressPrinter:
    """A tqdm bar over sampling steps."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.bar = total, desc, None

    def __call__(self, info: StepInfo) -> None:
        if self.bar is None:  # opened at the first step, so warnings printed before sampling keep their own line
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=self.desc, unit="step")
        self.bar.update(1)
        if info.step + 1 == info.steps:
            self.bar.close()


def run_generate(args: argparse.Namespace) -> int:
    check_output_path(args.out)  # before any expensive work, so a typo never costs a generation
    tiny = args.model == "tiny"
    folder = _tiny_folder() if tiny else Path(args.model)
    args = check_generate_args(args, folder)  # every rule and the memory estimate, before any weight loads
    device = rules.device(args.device)
    started = time.time()
    model = load_model(folder, device=device, dtype=args.dtype)
    accelerate(model, attention=args.attention, compile=args.compile, low_vram=args.low_vram, fp8=args.fp8)
    tiny = tiny or is_tiny(folder)
    if tiny:
        print(f"NOTE: {TINY_LABEL}.")
    height, width = args.height, args.width  # defaults per tokenizer: filled in by check_generate_args
    latent = model.geometry.latent_shape(args.frames, height, width)
    steps, motion = args.steps, args.motion
    schedule, given = conditioning(model, args, latent[0], width, height)
    print(f"loaded {folder} on {device} in {time.time() - started:.1f} s; sampling {args.frames} frame(s) "
          f"{width}x{height} = {latent} latent tokens, {steps} steps")
    tokens = generate(model, args.prompt, args.negative, height=height, width=width, frames=args.frames,
                      steps=steps, guidance=args.cfg, guidance_trunc=args.guidance_trunc, shift=args.shift,
                      seed=args.seed, schedule=schedule, given_tokens=given, motion=motion,
                      callback=ProgressPrinter(steps, "sampling"), sampler=args.sampler)
    if args.save_tokens:
        from .token_io import save_tokens
        save_tokens(tokens, args.save_tokens, fps=model.geometry.fps, model=str(folder))
    images = decode_tokens(model, tokens)
    paths = write_frames(images, args.out, fps=model.geometry.fps)
    print(f"wrote {len(images)} frame(s) to {', '.join(map(str, paths[:3]))}{' ...' if len(paths) > 3 else ''} "
          f"({time.time() - started:.1f} s total)")
    return 0


def decode_tokens(model: URSAModel, tokens: torch.Tensor, callback: Optional[callable] = None) -> torch.Tensor:
    """Tokens [B, T, h, w] -> IMAGE [B*F, H, W, 3] float32 CPU."""
    if model.vae is None:
        raise InputError(f"{model.folder}: this checkpoint has no vae/ folder, so tokens cannot be decoded")
    return decode_images(model.vae, tokens, callback)


def _tiny_folder() -> Path:
    from .cli import tiny_model_dir
    return tiny_model_dir()
