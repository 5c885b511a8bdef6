"""`ursa generate`: check files, load, condition, sample, decode, write (atomically)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

from .. import rules
from ..checkpoint.defaults import ModelIdentity, identify
from ..checkpoint.finetune import check_transformer_weights
from ..checkpoint.loader import URSAModel, load_model
from ..checkpoint.tiny import TINY_LABEL, is_tiny, model_folder
from ..errors import InputError
from ..files.atomic import check_writable
from ..files.media import OUTPUT_SUFFIXES, frame_paths, load_image, write_frames
from ..files.token_io import model_identity, save_tokens, token_file_path
from ..lora.files import read_lora
from ..lora.patch import match, projection_shapes, with_loras
from ..model.config import TransformerConfig
from ..model.modeling_ursa import expected_state_shapes
from ..parallel.distributed import build_layout, init_from_env, launched_world, process_device
from ..path.schedule import FrameSchedule
from ..runtime.loader_options import placement_device
from ..runtime.speed import Placement, SpeedOptions, with_speed
from ..sampling.generate import StepInfo, generate
from ..sampling.preflight import check_clip, check_options, checkpoint_rules
from ..sampling.repaint import Canvas
from ..visual_tokenizer.codec import decode_tokens, encode_images
from ..visual_tokenizer.geometry import VisualGeometry
from .arguments import Request, check_first_frame, check_images, repaint_flags, request, speed_options
from .canvas_flags import canvas_flags, composite_onto_source, read_canvas, repaint_tokens


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


def report_written(images: torch.Tensor, paths, started: float) -> None:
    shown = ", ".join(map(str, paths[:3])) + (" ..." if len(paths) > 3 else "")
    print(f"wrote {len(images)} frame(s) to {shown} ({time.time() - started:.1f} s total)")


def load_for_cli(folder: Path, device: torch.device, dtype: str, speed: SpeedOptions,
                 transformer_weights: Optional[str] = None, loras: Sequence = ()) -> URSAModel:
    """One model load (with fine-tuned transformer weights over it) with the speed options (the text side's device
    among them) and the tokenizer on its device, "default" devices being the transformer's; then the LoRAs
    ((LoRAFile, strength), checked by check_model_files) on that handle."""
    loaded = load_model(folder, device=device, dtype=dtype, transformer_weights=transformer_weights)
    model = with_speed(loaded, speed, Placement.single(device))
    if model.visual_tokenizer is not None:
        model.visual_tokenizer.to(placement_device(speed.vq_device, device))
    return with_loras(model, loras) if loras else model


def sample_tokens(model: URSAModel, run: Request, images: dict, prompt: str, callback=None,
                  parallel=None) -> torch.Tensor:
    """Tokens of one generation of `run` (settings already checked against the checkpoint)."""
    settings = run.settings
    latent = settings.latent_shape(model.geometry)
    schedule, given = conditioning(model, images, latent[0], settings.width, settings.height, run.resize)
    return generate(model, prompt, run.negative, settings, schedule=schedule, given_tokens=given,
                    callback=callback, parallel=parallel).tokens


class CheckedRun(NamedTuple):
    """A generation whose every rule passed before any weight loads: the flags as a Request with the checkpoint's
    defaults, which model they are, its transformer config, the LoRAs as read, the canvas of a repaint (None
    without one) and the conditioning images read."""
    run: Request
    identity: ModelIdentity
    config: TransformerConfig
    loras: list
    canvas: Optional[Canvas]
    images: dict


def checked_request(args: argparse.Namespace, folder: Path, speed: SpeedOptions, session=None) -> CheckedRun:
    """The flags checked against the checkpoint and the memory estimate, on the device this process (this rank of
    a launch: `session`) will run on."""
    device = process_device(args.device, session)
    dtype = check_options(args.dtype, speed, args.sampler, device)
    config, geometry = checkpoint_rules(folder)
    loras = check_model_files(args, config)
    identity = identify(folder, config.hidden_size, geometry)
    flags, canvas = vars(args), None
    repaint = repaint_flags(flags)
    if repaint is not None:
        canvas = read_canvas(repaint, args.frames, args.resize)
        flags = canvas_flags(flags, canvas, geometry)
    run = request(flags, identity.defaults, Path(args.out).suffix.lower() == ".png", repaint)
    images = checked_sample(run, config, geometry, speed, dtype, device)
    return CheckedRun(run, identity, config, loras, canvas, images)


def checked_sample(run: Request, config: TransformerConfig, geometry: VisualGeometry, speed: SpeedOptions,
                   dtype: torch.dtype, device: torch.device) -> dict[int, torch.Tensor]:
    """The rules of one sample (`ursa generate`'s, and each of `ursa batch`'s): its images against its frames, the
    memory estimate on `device`, its image files read (a bad file costs nothing) and a first frame's clip length.
    Returns the images read."""
    check_images(run, geometry)
    check_clip(config, geometry, run.settings, speed, dtype, device)
    images = read_images(run)
    check_first_frame(run)
    return images


def check_model_files(args: argparse.Namespace, config) -> list:
    """--transformer-weights (names and shapes only) and every --lora against the checkpoint's transformer, before
    any load; the LoRAs as read, with their strengths."""
    if args.transformer_weights:
        check_transformer_weights(args.transformer_weights, expected_state_shapes(config))
    loras = [(read_lora(path), value) for path, value in args.lora or ()]
    for lora, _ in loras:
        match(lora, projection_shapes(config))
    return loras


def describe_run(identity: ModelIdentity, run: Request, args: argparse.Namespace) -> str:
    """What the run uses, and which settings the model's defaults (or --preset) filled in."""
    s = run.settings
    tuned = f" with transformer weights {args.transformer_weights}" if args.transformer_weights else ""
    tuned += "".join(f" + LoRA {path} x{value:g}" for path, value in args.lora or ())
    source = "the model's defaults" + (f" and preset {args.preset}" if args.preset != "none" else "")
    filled = f" ({', '.join(run.from_model)} from {source})" if run.from_model else ""
    return (f"model {identity.name} (from the {identity.source}){tuned}; sampling {s.frames} frame(s) "
            f"{s.width}x{s.height}, {s.steps} steps, cfg {s.guidance:g}{filled}")


def run_generate(args: argparse.Namespace, session=None) -> int:
    """`ursa generate`; `session`: this rank's ursa_core.parallel.ranks.RankSession under torchrun (None: one
    process)."""
    check_output_path(args.out, args.frames or 1)   # a video's frames are one MP4, an image output's one PNG
    tokens_path: Optional[Path] = None
    if args.save_tokens:
        tokens_path = check_writable(token_file_path(args.save_tokens), "--save-tokens")
    folder = model_folder(args.model)
    speed = speed_options(args)
    run, identity, config, loras, canvas, images = checked_request(args, folder, speed, session)
    if run.settings.frames != (args.frames or 1):   # frames no flag gave (a --video repaint's): one PNG each
        check_output_path(args.out, run.settings.frames)
    kv_heads = config.num_key_value_heads
    rules.parallel_layout(args.parallel, launched_world(), kv_heads)
    rank, world, device = init_from_env(args.device, session)
    layout = build_layout(args.parallel, kv_heads) if world > 1 else None
    started = time.time()
    model = load_for_cli(folder, device, args.dtype, speed, args.transformer_weights, loras)
    if is_tiny(folder) and rank == 0:
        print(f"NOTE: {TINY_LABEL}.")
    settings = run.settings
    latent = settings.latent_shape(model.geometry)
    if rank == 0:
        print(f"loaded {folder} on {device} in {time.time() - started:.1f} s (attention: "
              f"{model.transformer.attn_implementation}); {describe_run(identity, run, args)}, "
              f"{latent} latent tokens"
              + (f", {args.parallel} parallel over {layout.world} ranks" if layout is not None else ""))
    progress = ProgressPrinter(settings.steps, "sampling") if rank == 0 else None
    try:
        if canvas is None:
            tokens, scheduled = sample_tokens(model, run, images, args.prompt, progress, layout), None
        else:
            tokens, scheduled = repaint_tokens(model, run, canvas, args.prompt, progress, layout)
    finally:
        if progress is not None:
            progress.close()
    if rank != 0:  # the other ranks of a parallel run hold the same tokens; rank 0 writes them
        return 0
    if tokens_path is not None:
        save_tokens(tokens, tokens_path, identity=model_identity(model), fps=model.geometry.fps, model=str(folder))
        print(f"saved tokens to {tokens_path}")
    images = decode_tokens(model, tokens)
    if scheduled is not None and run.repaint.composite is not None:
        images = composite_onto_source(model, images, canvas, scheduled, run.repaint.composite)
    report_written(images, write_frames(images, args.out, fps=model.geometry.fps), started)
    return 0
