"""`ursa generate`: check files, load, condition, sample, decode, write (atomically)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

from .. import rules
from ..acceleration import accelerate
from ..atomic import check_writable
from ..codec import decode_tokens, encode_images
from ..errors import InputError
from ..generate import StepInfo, generate
from ..media import OUTPUT_SUFFIXES, frame_paths, load_image, write_frames
from ..loader_options import place_parts
from ..parallel import build_layout, init_from_env, launched_world
from ..preflight import check_generate_args, checkpoint_rules
from ..checkpoint import URSAModel, load_model
from ..schedule import FrameSchedule
from ..tiny import TINY_LABEL, is_tiny, model_folder
from ..token_io import model_identity, save_tokens, token_file_path


def check_output_path(out: str, frames: int = 1) -> Path:
    """The --out rules, before any expensive work, so a typo never costs a generation."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {out}: unsupported extension {suffix!r}; use .png or .mp4")
    for path in frame_paths(out, frames if suffix != ".mp4" else 1):  # `out` itself for one frame or an MP4
        check_writable(path, "--out")
    return Path(out)


def read_images(args) -> dict[int, torch.Tensor]:
    """--image / --last-image pixels, read before the model loads (a bad file costs nothing); the frame rules
    were checked by preflight.check_generate_args."""
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
    """A tqdm bar over sampling steps; close() ends its line also when sampling stops early (Ctrl-C, an error), so
    the message after it starts on a line of its own."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.bar = total, desc, None

    def __call__(self, info: StepInfo) -> None:
        if self.bar is None:  # opened at the first step, so warnings printed before sampling keep their own line
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=self.desc, unit="step")
        self.bar.update(1)
        if info.step + 1 == info.steps:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def report_written(images: torch.Tensor, paths, started: float) -> None:
    shown = ", ".join(map(str, paths[:3])) + (" ..." if len(paths) > 3 else "")
    print(f"wrote {len(images)} frame(s) to {shown} ({time.time() - started:.1f} s total)")


def load_for_cli(folder: Path, device: torch.device, args: argparse.Namespace) -> URSAModel:
    """One model load with the speed options and the placement of the tokenizer and the text side."""
    model = load_model(folder, device=device, dtype=args.dtype)
    accelerate(model, attention=args.attention, compile=args.compile, low_vram=args.low_vram,
               weight_dtype=args.weight_dtype, blocks_on_gpu=args.blocks_on_gpu)
    place_parts(model, args.vq_device, args.text_device)
    return model


def sample_tokens(model: URSAModel, args: argparse.Namespace, images: dict, prompt: str, seed: int,
                  callback=None, parallel=None) -> torch.Tensor:
    """Tokens of one generation with `args`' settings (defaults already filled in by check_generate_args)."""
    latent = model.geometry.latent_shape(args.frames, args.height, args.width)
    schedule, given = conditioning(model, images, latent[0], args.width, args.height, args.resize)
    return generate(model, prompt, args.negative, height=args.height, width=args.width, frames=args.frames,
                    steps=args.steps, guidance=args.cfg, guidance_trunc=args.guidance_trunc, shift=args.shift,
                    seed=seed, schedule=schedule, given_tokens=given, motion=args.motion, callback=callback,
                    sampler=args.sampler, parallel=parallel).tokens


def run_generate(args: argparse.Namespace) -> int:
    check_output_path(args.out, args.frames)
    tokens_path: Optional[Path] = None
    if args.save_tokens:
        tokens_path = check_writable(token_file_path(args.save_tokens), "--save-tokens")
    folder = model_folder(args.model)
    args = check_generate_args(args, folder)  # every rule and the memory estimate, before any weight loads
    kv_heads = checkpoint_rules(folder)[0].num_key_value_heads
    rules.parallel_layout(args.parallel, launched_world(), kv_heads)
    images = read_images(args)
    rank, world, device = init_from_env(args.device)
    layout = build_layout(args.parallel, kv_heads) if world > 1 else None
    started = time.time()
    model = load_for_cli(folder, device, args)
    tiny = args.model == "tiny" or is_tiny(folder)
    if tiny and rank == 0:
        print(f"NOTE: {TINY_LABEL}.")
    latent = model.geometry.latent_shape(args.frames, args.height, args.width)
    if rank == 0:
        print(f"loaded {folder} on {device} in {time.time() - started:.1f} s (attention: "
              f"{model.transformer.attn_implementation}); sampling {args.frames} frame(s) "
              f"{args.width}x{args.height} = {latent} latent tokens, {args.steps} steps"
              + (f", {args.parallel} parallel over {layout.world} ranks" if layout is not None else ""))
    progress = ProgressPrinter(args.steps, "sampling") if rank == 0 else None
    try:
        tokens = sample_tokens(model, args, images, args.prompt, args.seed, progress, layout)
    finally:
        if progress is not None:
            progress.close()
    if rank != 0:  # the other ranks of a parallel run hold the same tokens; rank 0 writes them
        return 0
    if tokens_path is not None:
        save_tokens(tokens, tokens_path, identity=model_identity(model), fps=model.geometry.fps, model=str(folder))
        print(f"saved tokens to {tokens_path}")
    images = decode_tokens(model, tokens)
    report_written(images, write_frames(images, args.out, fps=model.geometry.fps), started)
    return 0
