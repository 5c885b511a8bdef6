"""The README's main job: `python -m ursa_core generate ...` end to end (load, condition, sample, decode, write)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

from .acceleration import accelerate
from .codec import decode_images, encode_images
from .errors import InputError
from .generate import StepInfo, generate
from .media import OUTPUT_SUFFIXES, load_image, write_frames
from .model import URSAModel, load_model
from .schedule import FrameSchedule
from .tiny import TINY_LABEL, is_tiny


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


def default_size(model: URSAModel, tiny: bool) -> tuple[int, int]:
    if tiny:
        return 64, 64
    return (1024, 1024) if model.geometry.image_only else (320, 512)


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
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=desc, unit="step")

    def __call__(self, info: StepInfo) -> None:
        self.bar.update(1)
        if info.step + 1 == info.steps:
            self.bar.close()


def run_generate(args: argparse.Namespace) -> int:
    check_output_path(args.out)  # before any expensive work, so a typo never costs a generation
    tiny = args.model == "tiny"
    folder = _tiny_folder() if tiny else Path(args.model)
    device = pick_device(args.device)
    started = time.time()
    model = load_model(folder, device=device, dtype=args.dtype)
    accelerate(model, attention=args.attention, compile=args.compile, low_vram=args.low_vram, fp8=args.fp8,
               weight_dtype=args.weight_dtype, blocks_on_gpu=args.blocks_on_gpu)
    tiny = tiny or is_tiny(folder)
    if tiny:
        print(f"NOTE: {TINY_LABEL}.")
    height, width = args.height or default_size(model, tiny)[0], args.width or default_size(model, tiny)[1]
    latent = model.geometry.latent_shape(args.frames, height, width)
    steps = args.steps or (8 if tiny else (25 if args.frames == 1 else 50))
    motion = args.motion if args.motion is not None else (9.0 if args.frames > 1 else None)
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
