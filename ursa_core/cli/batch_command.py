"""`ursa batch`: a prompt set with one model load, resumable, shared between torchrun ranks (ursa_core.batch).

Before any weight loads: the evaluation preset's settings are applied (ursa_core.batch.presets; an option given on
the command line wins, and the run says so), every output name is computed and checked, every sample's settings
(the command line's, with the item's overrides) pass the same rules as `ursa generate`, memory estimate included,
the output folder is locked for this run (ursa_core.batch.run_lock) and finished outputs made under another seed rule or
other settings are refused (or, with --overwrite-stale, queued to be regenerated). A bad item is one line naming the
item, the value and the rule.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import torch

from .. import rules
from ..batch.prompt_sets import (MANIFEST, Claims, Job, PromptSet, prompt_format, read_prompt_set, run_jobs,
                                stale_outputs)
from ..batch.presets import PROTOCOLS, Protocol
from ..batch.run_lock import acquire
from ..checkpoint.loader import resolve_dtype
from ..errors import InputError
from ..files.atomic import TEMP_MARK, atomic_file, check_writable
from ..files.media import load_image, write_frames
from ..parallel.distributed import barrier, init_from_env
from ..sampling.preflight import DEFAULTS, PRESET_OPTIONS, check_generate_args
from ..visual_tokenizer.codec import decode_tokens
from .generate_command import load_for_cli, model_folder, sample_tokens

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
# The settings that change an output's pixels: recorded per sample and compared on resume (images by content).
COMPARED_SETTINGS = ("frames", "height", "width", "steps", "cfg", "guidance_trunc", "shift", "motion", "negative",
                     "resize", "weight_dtype")
SPEED_SETTINGS = ("attention", "sampler", "compile", "low_vram", "blocks_on_gpu", "vq_device", "text_device")


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
            raise InputError(f"item {_shown(job)}: {exc}") from None
        frames = {a.frames for a in plans[job.key]}
        image_out = job.out.endswith(".png")
        if image_out != (frames == {1}):
            raise InputError(f"item {_shown(job)}: frames={sorted(frames)[0]} does not fit its output {job.out} "
                             f"({'images need --frames 1' if image_out else 'videos need --frames 5 or more'})")
    return plans


def _shown(job: Job) -> str:
    """A job as a message names it: its id, or the start of its prompt."""
    return repr(job.samples[0].identity.split("\n")[0][:60])


def apply_protocol(args: argparse.Namespace, fmt: str) -> tuple[argparse.Namespace, Optional[Protocol], dict]:
    """The run's settings: an option given on the command line, else the format's reference protocol, else the
    command line's default. Returns them, the protocol and {option: (given, reference)} where they differ."""
    protocol = PROTOCOLS.get(fmt)
    values, overridden = {}, {}
    for name in PRESET_OPTIONS:
        given = getattr(args, name)
        reference = protocol.settings.get(name) if protocol else None
        if given is not None and reference is not None and given != reference:
            overridden[name] = (given, reference)
        values[name] = given if given is not None else reference if reference is not None else DEFAULTS.get(name)
    return argparse.Namespace(**{**vars(args), **values}), protocol, overridden


def describe_protocol(protocol: Optional[Protocol], overridden: dict) -> Optional[str]:
    if protocol is None:
        return None
    settings = ", ".join(f"{k}={v}" for k, v in protocol.settings.items() if k != "negative")
    line = f"{protocol.describe()}: {settings}" + (", its negative prompt" if protocol.settings.get("negative")
                                                    else "")
    if overridden:
        line += "; differs from it: " + ", ".join(f"{k}={g!r} (reference {r!r})" for k, (g, r) in overridden.items())
    return line


def _file_sha256(path: Optional[str]) -> Optional[str]:
    return None if not path else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_fingerprint(folder: Path) -> dict:
    """The checkpoint as its outputs record it: its name and the hashes of its two configs (read before loading)."""
    return {"name": folder.name, **{f"{part}_config": _file_sha256(str(folder / part / "config.json"))[:16]
                                    for part in ("transformer", "vae")}}


def describer(plans: dict, folder: Path, device: torch.device, protocol: Optional[Protocol]):
    """describe(job) for ursa_core.batch.run_jobs: the model and each sample's settings that change its pixels."""
    model = model_fingerprint(folder)
    cache: dict = {}

    def settings(args: argparse.Namespace) -> dict:
        if id(args) not in cache:
            cache[id(args)] = {**{k: getattr(args, k) for k in COMPARED_SETTINGS},
                               "dtype": str(resolve_dtype(args.dtype, device)).replace("torch.", ""),
                               "image_sha256": _file_sha256(args.image),
                               "last_image_sha256": _file_sha256(args.last_image)}
        return cache[id(args)]

    def describe(job: Job) -> dict:
        return {"model": model, "protocol": protocol.describe() if protocol else None,
                "settings": [settings(a) for a in plans[job.key]]}
    return describe


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


def _check_square(protocol: Optional[Protocol], plans: dict) -> None:
    if protocol is not None and protocol.square:
        for key, sample_args in plans.items():
            if any(a.height != a.width for a in sample_args):
                a = sample_args[0]
                raise InputError(f"--height {a.height} --width {a.width}: {protocol.name}'s scorer crops square "
                                 f"tiles of the grid; give equal sizes")


def _refuse_or_replace(stale: list, outdir: Path, overwrite: bool) -> None:
    """Finished outputs made under another seed rule or other settings are never mixed with new ones."""
    if not stale:
        return
    job, why = stale[0]
    if not overwrite:
        raise InputError(f"--outdir {outdir}: {len(stale)} finished output(s) there were made under another seed "
                         f"rule or other settings ({job.out}: {why}); rerun with --overwrite-stale to regenerate "
                         f"them, or choose another --outdir")
    print(f"regenerating {len(stale)} stale output(s) ({job.out}: {why})", flush=True)


def prepare(args: argparse.Namespace, folder: Path) -> tuple[argparse.Namespace, PromptSet, dict, Optional[Protocol],
                                                             dict]:
    """Every check that needs no weights and no other rank: the settings, the set, its names, its samples."""
    fmt = prompt_format(args.prompts, args.format)
    args, protocol, overridden = apply_protocol(args, fmt)
    prompt_set = read_prompt_set(args.prompts, fmt, args.samples, args.seed, ".png" if args.frames == 1 else ".mp4",
                                 args.prompt_field)
    base = argparse.Namespace(**{**vars(args), "image": None, "last_image": None})
    plans = plan_samples(prompt_set.jobs, base, folder, Path(args.prompts))
    _check_square(protocol, plans)
    return args, prompt_set, plans, protocol, overridden


def run_batch(args: argparse.Namespace, session=None) -> int:
    """`ursa batch`; `session`: this rank's ursa_core.parallel.ranks.RankSession under torchrun (None: one process)."""
    folder = model_folder(args.model)
    if not (folder / "vae" / "config.json").is_file():
        raise InputError(f"--model {folder}: has no vae/config.json; a batch decodes every output")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"--outdir {outdir}: is a file; give a folder")
    rank, world = (session.rank, session.world) if session else (0, 1)
    device = rules.rank_device(args.device, session.local_rank, world) if session else rules.device(args.device)
    args, prompt_set, plans, protocol, overridden = prepare(args, folder)
    describe = describer(plans, folder, device, protocol)
    check_writable(outdir / MANIFEST, "--outdir")   # a folder that cannot be written is refused before any load
    lock = acquire(outdir, world) if rank == 0 else None   # the ranks of one launch are one run
    try:
        if rank == 0:
            _refuse_or_replace(stale_outputs(prompt_set.jobs, outdir, describe), outdir, args.overwrite_stale)
            _announce(args, prompt_set, protocol, overridden, outdir, world, lock)
        return _render_set(args, prompt_set, plans, protocol, describe, folder, outdir, session)
    finally:
        if lock is not None:
            lock.release()


def _announce(args, prompt_set: PromptSet, protocol, overridden: dict, outdir: Path, world: int, lock) -> None:
    if lock.took_over:
        print(f"took over the lock of a run that is gone (pid {lock.took_over['pid']})")
    if (stale := remove_stale_temporaries(outdir)):
        print(f"removed {stale} unfinished temporary file(s) of an earlier run")
    for line in filter(None, [describe_protocol(protocol, overridden), *prompt_set.notes]):
        print(line)
    print(f"{len(prompt_set.jobs)} outputs in {outdir} from {args.prompts}, {world} rank(s)", flush=True)


def _render_set(args, prompt_set: PromptSet, plans: dict, protocol, describe, folder: Path, outdir: Path,
                session) -> int:
    rank, world, device = init_from_env(args.device, session)
    barrier()   # no rank starts writing before rank 0 has the lock and the stale temporaries are gone
    model = load_for_cli(folder, device, args)
    fps = protocol.fps if protocol is not None and protocol.fps else model.geometry.fps

    def render(job: Job, target: Path, publish) -> None:
        pixels = []
        for sample, sample_args in zip(job.samples, plans[job.key]):
            images = {which: load_image(path) for which, path in ((0, sample_args.image),
                                                                   (-1, sample_args.last_image)) if path}
            pixels.append(decode_tokens(model, sample_tokens(model, sample_args, images, sample.prompt,
                                                             sample.seed)))
        write_side_files(outdir, job)
        write_frames(grid2x2(pixels) if job.layout == "grid2x2" else pixels[0], target, fps=fps,
                     before_rename=publish)

    jobs = prompt_set.jobs
    info = {"device": str(device), "speed": {k: getattr(args, k) for k in SPEED_SETTINGS}}
    claims, progress = Claims(len(jobs), session.store if session else None), SetProgress() if rank == 0 else None
    report = run_jobs(jobs, outdir, render, claims, rank=rank, progress=progress, describe=describe, info=info)
    barrier()
    if progress is not None and claims.finished() != progress.last:  # the other ranks finished the last jobs
        progress(claims.finished(), len(jobs), claims.rendered())
    print(f"rank {rank}: wrote {len(report.done)}, skipped {len(report.skipped)} finished, "
          f"{report.seconds:.1f} s", flush=True)
    return 0
