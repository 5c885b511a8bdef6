"""`ursa batch`: a prompt set with one model load, resumable, shared between torchrun ranks (ursa_core.batch).

Every sample's settings (the command line's, with the item's overrides) pass the same rules as `ursa generate`,
memory estimate included, before any weight loads; a bad item is one line naming the item, the value and the rule.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import rules
from ..batch.prompt_sets import MANIFEST, Claims, Job, distributed_store, read_jobs, run_jobs
from ..checkpoint.defaults import ModelDefaults, identify
from ..checkpoint.tiny import model_folder
from ..errors import InputError
from ..files.atomic import TEMP_MARK, atomic_file, check_writable
from ..files.media import load_image, write_frames
from ..parallel.distributed import barrier, init_from_env, launched_world
from ..runtime.speed import SpeedOptions
from ..sampling.preflight import check_clip, check_options, checkpoint_rules
from ..visual_tokenizer.codec import decode_tokens
from .arguments import Request, check_images, request, speed_options
from .generate_command import check_model_files, load_for_cli, sample_tokens

# A JSONL item's override -> (its rule, the flag it replaces). Item keys are the command line's names (cfg for the
# guidance scale), so a message names what the user wrote.
ITEM_RULES = {
    "frames": (rules.frames, "frames"),
    "height": (lambda v: rules.size("height", v), "height"),
    "width": (lambda v: rules.size("width", v), "width"),
    "steps": (rules.steps, "steps"),
    "cfg": (lambda v: rules.guidance(v, "cfg"), "guidance"),
    "motion": (rules.motion, "motion"),
    "negative": (lambda v: v if isinstance(v, str) else rules.choice("negative", v, ["a string"]), "negative"),
}
RECORDED = ("frames", "height", "width", "steps", "guidance", "guidance_trunc", "shift", "motion", "sampler")


@dataclass(frozen=True)
class BatchBase:
    """What every sample of a set shares: the command line's flags and options, checked once."""
    flags: dict          # the flag values (no --image / --last-image: items bring their own)
    defaults: ModelDefaults
    speed: SpeedOptions
    dtype: torch.dtype
    device: torch.device
    folder: Path
    prompts_dir: Path


def _sample_request(base: BatchBase, overrides: dict, cache: dict, image_output: bool) -> Request:
    """The request of one sample: the command line's flags with the item's overrides (defaults follow the model and
    the item's frames; an image output asks for one frame), checked (cached per distinct set of overrides)."""
    # typed: "7" and 7 are different settings (only 7 is a cfg)
    key = json.dumps([overrides, image_output], sort_keys=True)
    if key not in cache:
        changes = {flag: rule(overrides[name]) for name, (rule, flag) in ITEM_RULES.items() if name in overrides}
        paths = {name: str(base.prompts_dir / str(overrides[name])) for name in ("image", "last_image")
                 if overrides.get(name) is not None}   # relative to the prompt file's folder
        run = request({**base.flags, **changes, **paths}, base.defaults, image_output)
        check_images(run, checkpoint_rules(base.folder)[1])
        check_clip(base.folder, run.settings, base.speed, base.dtype, base.device)
        for path in paths.values():   # an unreadable image is refused now, not hours into the set
            load_image(path)
        cache[key] = run
    return cache[key]


def plan_samples(jobs: list[Job], base: BatchBase) -> dict:
    """job key -> the checked request of each of its samples; every rule runs here, before the model loads."""
    cache: dict = {}
    plans = {}
    for job in jobs:
        try:
            plans[job.key] = [_sample_request(base, s.settings, cache, job.out.endswith(".png"))
                              for s in job.samples]
        except InputError as exc:
            raise InputError(f"item {job.key}: {exc}") from None
        frames = {r.settings.frames for r in plans[job.key]}
        image_out = job.out.endswith(".png")
        if image_out != (frames == {1}):
            raise InputError(f"item {job.key}: frames={sorted(frames)[0]} does not fit its output {job.out} "
                             f"({'images need --frames 1' if image_out else 'videos need --frames 5 or more'})")
    return plans


def manifest_settings(run: Request, speed: SpeedOptions, dtype: str) -> dict:
    """One sample's settings as the manifest records them, under the command line's names."""
    settings = {name: getattr(run.settings, name) for name in RECORDED}
    settings["cfg"] = settings.pop("guidance")
    return {**settings, "negative": run.negative, "image": run.image, "last_image": run.last_image, "dtype": dtype,
            "attention": speed.attention}


def remove_stale_temporaries(outdir: Path) -> int:
    """Temporaries a killed run left (hidden `.name.<hex>.partial.ext`; never taken for outputs, which are
    matched by their exact names) are removed before a rerun starts."""
    stale = [p for p in outdir.rglob(f".*{TEMP_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def grid2x2(images: list[torch.Tensor]) -> torch.Tensor:
    """Four [1, H, W, 3] images -> one [1, 2H, 2W, 3] grid (DPG-Bench's layout: row-major)."""
    return torch.cat([torch.cat(images[:2], dim=2), torch.cat(images[2:], dim=2)], dim=1)


def write_side_files(outdir: Path, job: Job) -> None:
    """Files the evaluator reads beside the outputs (GenEval's per-prompt metadata.jsonl), written atomically."""
    for relative, text in job.side_files:
        path = outdir / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            with atomic_file(path) as tmp:
                tmp.write_text(text, encoding="utf-8")


class SetProgress:
    """Rank 0's line per finished job: jobs finished by all ranks of the set and the rate since the start."""

    def __init__(self):
        self.started, self.last = time.time(), None

    def __call__(self, done: int, total: int, rendered: int) -> None:
        self.last = done
        hours = max(time.time() - self.started, 1e-6) / 3600
        rate = f", {rendered / hours:.1f} clips/hour" if rendered else " (already there)"
        print(f"[batch] {done}/{total} done{rate}", flush=True)


def check_set(args: argparse.Namespace, folder: Path) -> tuple[list[Job], BatchBase, dict, list]:
    """The jobs of the set, what their samples share, each sample's checked request and the LoRAs as read, before any
    weight loads."""
    if not (folder / "vae" / "config.json").is_file():
        raise InputError(f"--model {folder}: has no vae/config.json; a batch decodes every output")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"--outdir {outdir}: is a file; give a folder")
    if launched_world() > 1:
        device = rules.rank_device(args.device, 0, launched_world())
    else:
        device = rules.device(args.device)
    config, geometry = checkpoint_rules(folder)
    loras = check_model_files(args, config)
    defaults = identify(folder, config.hidden_size, geometry).defaults
    frames = defaults.frames if args.frames is None else args.frames
    jobs = read_jobs(args.prompts, args.format, args.samples, args.seed, ".png" if frames == 1 else ".mp4")
    speed = speed_options(args)
    dtype = check_options(args.dtype, speed, args.sampler, device)
    flags = {**vars(args), "image": None, "last_image": None}
    prompts = Path(args.prompts)
    base = BatchBase(flags, defaults, speed, dtype, device, folder, prompts if prompts.is_dir() else prompts.parent)
    return jobs, base, plan_samples(jobs, base), loras


def run_batch(args: argparse.Namespace) -> int:
    folder = model_folder(args.model)
    jobs, base, plans, loras = check_set(args, folder)
    outdir = Path(args.outdir)
    check_writable(outdir / MANIFEST, "--outdir")   # a folder that cannot be written is refused before any load
    rank, world, device = init_from_env(args.device)
    outdir.mkdir(parents=True, exist_ok=True)
    if rank == 0 and (stale := remove_stale_temporaries(outdir)):
        print(f"removed {stale} unfinished temporary file(s) of an earlier run")
    barrier()   # no rank starts writing before the stale temporaries are gone
    model = load_for_cli(folder, device, args.dtype, base.speed, args.transformer_weights, loras)

    def render(job: Job, target: Path) -> dict:
        pixels = []
        for sample, run in zip(job.samples, plans[job.key]):
            run = replace(run, settings=replace(run.settings, seed=sample.seed))
            images = {which: load_image(path) for which, path in ((0, run.image), (-1, run.last_image)) if path}
            pixels.append(decode_tokens(model, sample_tokens(model, run, images, sample.prompt)))
        write_side_files(outdir, job)
        write_frames(grid2x2(pixels) if job.layout == "grid2x2" else pixels[0], target, fps=model.geometry.fps)
        return {"settings": [manifest_settings(r, base.speed, args.dtype) for r in plans[job.key]],
                "device": str(device), "transformer_weights": args.transformer_weights,
                "lora": [[path, value] for path, value in args.lora or ()]}

    if rank == 0:
        print(f"{len(jobs)} outputs in {outdir} from {args.prompts}, {world} rank(s)", flush=True)
    claims, progress = Claims(len(jobs), distributed_store()), SetProgress() if rank == 0 else None
    report = run_jobs(jobs, outdir, render, claims, rank=rank, progress=progress)
    barrier()
    if progress is not None and claims.finished() != progress.last:  # the other ranks finished the last jobs
        progress(claims.finished(), len(jobs), claims.rendered())
    print(f"rank {rank}: wrote {len(report.done)}, skipped {len(report.skipped)} finished, "
          f"{report.seconds:.1f} s", flush=True)
    return 0
