"""`ursa generate`: check files, load, condition, sample, decode, write (atomically)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

from ..acceleration import accelerate
from ..atomic import check_writable
from ..codec import decode_tokens, encode_images
from ..errors import InputError
from ..generate import StepInfo, generate
from ..media import OUTPUT_SUFFIXES, frame_paths, load_image, write_frames
from ..checkpoint import URSAModel, load_model
from ..schedule import FrameSchedule
from ..tiny import TINY_LABEL, is_tiny, tiny_model_dir
from ..token_io import model_identity, save_tokens, token_file_path


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def model_folder(name: str) -> Path:
    return tiny_model_dir() if name == "tiny" else Path(name)


def default_size(model: URSAModel, tiny: bool) -> tuple[int, int]:
    if tiny:
        return 64, 64
    return (1024, 1024) if model.geometry.image_only else (320, 512)


def check_output_path(out: str, frames: int = 1) -> Path:
    """The --out rules, before any expensive work, so a typo never costs a generation."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {out}: unsupported extension {suffix!r}; use .png or .mp4")
    check_writable(out, "--out")
    for path in frame_paths(out, frames if suffix != ".mp4" else 1):
        check_writable(path, "--out")
    return Path(out)


def read_images(args) -> dict[int, torch.Tensor]:
    """--image / --last-image pixels, read before the model loads (a bad file costs nothing)."""
    if args.last_image and args.frames < 5:
        raise InputError(f"--last-image needs a video: frames={args.frames}, use --frames 5 or more")
    return {which: load_image(path) for which, path in ((0, args.image), (-1, args.last_image)) if path}


def conditioning(model: URSAModel, images: dict[int, torch.Tensor], latent_frames: int, width: int, height: int,
                 resize: str):
    """Schedule and given tokens from the conditioning images (frame 0 and/or the last frame)."""
    if not images:
        return None, None
    if model.visual_tokenizer is None:
        raise InputError(f"{model.folder}: this checkpoint has no vae/ folder, so images cannot be encoded")
    stride = model.geometry.spatial_stride
    given = torch.zeros(1, latent_frames, height // stride, width // stride, dtype=torch.long)
    starts = {}
    for which, pixels in images.items():
        index = which % latent_frames
        given[:, index] = encode_images(model.visual_tokenizer, pixels, width, height, resize)[:, 0]
        starts[index] = 1.0
    return FrameSchedule.keyframes(latent_frames, starts), given


class ProgressPrinter:
    """A tqdm bar over sampling steps."""

    def __init__(self, total: int, desc: str):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=desc, unit="step")

    def __call__(self, info: StepInfo) -> None:
        self.bar.update(1)
        if info.step + 1 == info.steps:
            self.bar.close()


def report_written(images: torch.Tensor, paths, started: float) -> None:
    shown = ", ".join(map(str, paths[:3])) + (" ..." if len(paths) > 3 else "")
    print(f"wrote {len(images)} frame(s) to {shown} ({time.time() - started:.1f} s total)")


def run_generate(args: argparse.Namespace) -> int:
    check_output_path(args.out, args.frames)
    tokens_path: Optional[Path] = None
    if args.save_tokens:
        tokens_path = check_writable(token_file_path(args.save_tokens), "--save-tokens")
    images = read_images(args)
    folder = model_folder(args.model)
    device = pick_device(args.device)
    started = time.time()
    model = load_model(folder, device=device, dtype=args.dtype)
    accelerate(model, attention=args.attention, compile=args.compile, low_vram=args.low_vram, fp8=args.fp8)
    tiny = args.model == "tiny" or is_tiny(folder)
    if tiny:
        print(f"NOTE: {TINY_LABEL}.")
    height, width = args.height or default_size(model, tiny)[0], args.width or default_size(model, tiny)[1]
    latent = model.geometry.latent_shape(args.frames, height, width)
    steps = args.steps or (8 if tiny else (25 if args.frames == 1 else 50))
    motion = args.motion if args.motion is not None else (9.0 if args.frames > 1 else None)
    schedule, given = conditioning(model, images, latent[0], width, height, args.resize)
    print(f"loaded {folder} on {device} in {time.time() - started:.1f} s; sampling {args.frames} frame(s) "
          f"{width}x{height} = {latent} latent tokens, {steps} steps")
    tokens = generate(model, args.prompt, args.negative, height=height, width=width, frames=args.frames,
                      steps=steps, guidance=args.cfg, guidance_trunc=args.guidance_trunc, shift=args.shift,
                      seed=args.seed, schedule=schedule, given_tokens=given, motion=motion,
                      callback=ProgressPrinter(steps, "sampling"), sampler=args.sampler).tokens
    if tokens_path is not None:
        save_tokens(tokens, tokens_path, identity=model_identity(model), fps=model.geometry.fps, model=str(folder))
        print(f"saved tokens to {tokens_path}")
    images = decode_tokens(model, tokens)
    report_written(images, write_frames(images, args.out, fps=model.geometry.fps), started)
    return 0
