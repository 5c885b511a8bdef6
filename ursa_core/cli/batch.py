"""`ursa batch`: a prompt set with one model load, resumable, shared between torchrun ranks (ursa_core.batch).

Every sample's settings (the command line's, with the item's overrides) pass the same rules as `ursa generate`,
memory estimate included, before any weight loads; a bad item is one line naming the item, the value and the rule.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .. import rules
from ..atomic import TEMP_MARK, atomic_file, check_writable
from ..batch import MANIFEST, Claims, Job, distributed_store, read_jobs, run_jobs
from ..codec import decode_tokens
from ..errors import InputError
from ..media import load_image, write_frames
from ..parallel import barrier, init_from_env, launched_world
from ..preflight import check_generate_args
from ..tiny import model_folder
from .generate import load_for_cli, sample_tokens

# A JSONL item's override -> its rule (the command line's rules; the names are the item keys of ursa_core.batch).
ITEM_RULES = {
    "frames": rules.frames,
    "height": lambda v: rules.size("height", v),
    "width": lambda v: rules.size("width", v),
    "steps": rules.steps,
    "cfg": rules.cfg,
    "motion": rules.motion,
    "negative": lambda v: v if isinstance(v, str) else rules.choice("negative", v, ["a string"]),
}
RECORDED = ("frames", "height", "width", "steps", "cfg", "guidance_trunc", "shift", "motion", "negative", "image",
            "last_image", "sampler", "dtype", "attention")


def _sample_args(base: argparse.Namespace, settings: dict, prompts_dir: Path, folder: Path,
                 cache: dict) -> argparse.Namespace:
    """The generate arguments of one sample, checked (cached per distinct set of overrides)."""
    key = json.dumps(settings, sort_keys=True)   # typed: "7" and 7 are different settings (only 7 is a cfg)
    if key not in cache:
        over = {name: ITEM_RULES[name](value) for name, value in settings.items() if name in ITEM_RULES}
        for name in ("image", "last_image"):  # paths relative to the prompt file's folder
            if settings.get(name) is not None:
                over[name] = str(prompts_dir / str(settings[name]))
        cache[key] = check_generate_args(argparse.Namespace(**{**vars(base), **over}), folder)
        for name in ("image", "last_image"):   # an unreadable image is refused now, not hours into the set
            if over.get(name):
                load_image(over[name])
    return cache[key]


def plan_samples(jobs: list[Job], base: argparse.Namespace, folder: Path, prompts: Path) -> dict:
    """job key -> the checked arguments of each of its samples; every rule runs here, before the model loads."""
    prompts_dir = prompts if prompts.is_dir() else prompts.parent
    cache: dict = {}
    plans = {}
    for job in jobs:
        try:
            plans[job.key] = [_sample_args(base, s.settings, prompts_dir, folder, cache) for s in job.samples]
        except InputError as exc:
            raise InputError(f"item {job.key}: {exc}") from None
        frames = {a.frames for a in plans[job.key]}
        image_out = job.out.endswith(".png")
        if image_out != (frames == {1}):
            raise InputError(f"item {job.key}: frames={sorted(frames)[0]} does not fit its output {job.out} "
                             f"({'images need --frames 1' if image_out else 'videos need --frames 5 or more'})")
    return plans


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


def run_batch(args: argparse.Namespace) -> int:
    folder = model_folder(args.model)
    if not (folder / "vae" / "config.json").is_file():
        raise InputError(f"--model {folder}: has no vae/config.json; a batch decodes every output")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"--outdir {outdir}: is a file; give a folder")
    if launched_world() > 1:
        rules.rank_device(args.device, 0, launched_world())
    else:
        rules.device(args.device)
    jobs = read_jobs(args.prompts, args.format, args.samples, args.seed, ".png" if args.frames == 1 else ".mp4")
    base = argparse.Namespace(**{**vars(args), "image": None, "last_image": None})
    plans = plan_samples(jobs, base, folder, Path(args.prompts))
    check_writable(outdir / MANIFEST, "--outdir")   # a folder that cannot be written is refused before any load
    rank, world, device = init_from_env(args.device)
    outdir.mkdir(parents=True, exist_ok=True)
    if rank == 0 and (stale := remove_stale_temporaries(outdir)):
        print(f"removed {stale} unfinished temporary file(s) of an earlier run")
    barrier()   # no rank starts writing before the stale temporaries are gone
    model = load_for_cli(folder, device, args)

    def render(job: Job, target: Path) -> dict:
        pixels = []
        for sample, sample_args in zip(job.samples, plans[job.key]):
            images = {which: load_image(path) for which, path in ((0, sample_args.image),
                                                                   (-1, sample_args.last_image)) if path}
            pixels.append(decode_tokens(model, sample_tokens(model, sample_args, images, sample.prompt,
                                                             sample.seed)))
        write_side_files(outdir, job)
        write_frames(grid2x2(pixels) if job.layout == "grid2x2" else pixels[0], target, fps=model.geometry.fps)
        return {"settings": [{k: getattr(a, k) for k in RECORDED} for a in plans[job.key]], "device": str(device)}

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
