"""`ursa generate`: check files, load, condition, sample, decode, write (atomically)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

from .. import rules
from ..checkpoint.defaults import defaults_for
from ..checkpoint.loader import URSAModel, load_model
from ..checkpoint.tiny import TINY_LABEL, is_tiny, model_folder
from ..errors import InputError
from ..files.atomic import check_writable
from ..files.media import OUTPUT_SUFFIXES, frame_paths, load_image, write_frames
from ..files.token_io import model_identity, save_tokens, token_file_path
from ..parallel.distributed import build_layout, init_from_env, launched_world
from ..path.schedule import FrameSchedule
from ..runtime.loader_options import placement_device
from ..runtime.speed import Placement, SpeedOptions, with_speed
from ..sampling.generate import StepInfo, generate
from ..sampling.preflight import check_clip, check_options, checkpoint_rules
from ..visual_tokenizer.codec import decode_tokens, encode_images
from .arguments import Request, check_images, request, speed_options


def check_output_path(out: str, frames: int = 1) -> Path:
    """The --out rules, before any expensive work, so a typo never costs a generation."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {out}: unsupported extension {suffix!r}; use .png or .mp4")
    for path in frame_paths(out, frames if suffix != ".mp4" else 1):  # `out` itself for one frame or an MP4
        check_writable(path, "--out")
    return Path(out)


def read_images(run: Request) -> dict[int, torch.Tensor]:
    """--image / --last-image pixels, read before the model loads (a bad file costs nothing); the frame rules
    were checked by arguments.check_images."""
    return {which: load_image(path) for which, path in ((0, run.image), (-1, run.last_image)) if path}


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
            self.close()

    def close(self) -> None:
        """End the bar's line (also when sampling stops early, so an error message gets a line of its own)."""
        if self.bar is not None:
            self.bar.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def report_written(images: torch.Tensor, paths, started: float) -> None:
    shown = ", ".join(map(str, paths[:3])) + (" ..." if len(paths) > 3 else "")
    print(f"wrote {len(images)} frame(s) to {shown} ({time.time() - started:.1f} s total)")


def load_for_cli(folder: Path, device: torch.device, dtype: str, speed: SpeedOptions) -> URSAModel:
    """One model load with the speed options (the text side's device among them) and the tokenizer on its device;
    "default" devices are the transformer's."""
    model = with_speed(load_model(folder, device=device, dtype=dtype), speed, Placement.single(device))
    if model.visual_tokenizer is not None:
        model.visual_tokenizer.to(placement_device(speed.vq_device, device))
    return model


def sample_tokens(model: URSAModel, run: Request, images: dict, prompt: str, callback=None,
                  parallel=None) -> torch.Tensor:
    """Tokens of one generation of `run` (settings already checked against the checkpoint)."""
    settings = run.settings
    latent = settings.latent_shape(model.geometry)
    schedule, given = conditioning(model, images, latent[0], settings.width, settings.height, run.resize)
    return generate(model, prompt, run.negative, settings, schedule=schedule, given_tokens=given,
                    callback=callback, parallel=parallel).tokens


def checked_request(args: argparse.Namespace, folder: Path, speed: SpeedOptions) -> Request:
    """The flags as a Request with the checkpoint's defaults, every rule and the memory estimate checked before
    any weight loads."""
    device = rules.device(args.device)
    dtype = check_options(args.dtype, speed, args.sampler, device)
    geometry = checkpoint_rules(folder)[1]
    run = request(vars(args), defaults_for(folder, geometry))
    check_images(run, geometry)
    check_clip(folder, run.settings, speed, dtype, device)
    return run


def run_generate(args: argparse.Namespace, session=None) -> int:
    """`ursa generate`; `session`: this rank's ursa_core.parallel.ranks.RankSession under torchrun (None: one
    process)."""
    check_output_path(args.out, args.frames)
    tokens_path: Optional[Path] = None
    if args.save_tokens:
        tokens_path = check_writable(token_file_path(args.save_tokens), "--save-tokens")
    folder = model_folder(args.model)
    speed = speed_options(args)
    run = checked_request(args, folder, speed)
    kv_heads = checkpoint_rules(folder)[0].num_key_value_heads
    rules.parallel_layout(args.parallel, launched_world(), kv_heads)
    images = read_images(run)
    rank, world, device = init_from_env(args.device, session)
    layout = build_layout(args.parallel, kv_heads) if world > 1 else None
    started = time.time()
    model = load_for_cli(folder, device, args.dtype, speed)
    if is_tiny(folder) and rank == 0:
        print(f"NOTE: {TINY_LABEL}.")
    settings = run.settings
    latent = settings.latent_shape(model.geometry)
    if rank == 0:
        print(f"loaded {folder} on {device} in {time.time() - started:.1f} s (attention: "
              f"{model.transformer.attn_implementation}); sampling {settings.frames} frame(s) "
              f"{settings.width}x{settings.height} = {latent} latent tokens, {settings.steps} steps"
              + (f", {args.parallel} parallel over {layout.world} ranks" if layout is not None else ""))
    progress = ProgressPrinter(settings.steps, "sampling") if rank == 0 else None
    try:
        tokens = sample_tokens(model, run, images, args.prompt, progress, layout)
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
