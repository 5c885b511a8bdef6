"""`ursa batch`: a prompt set with one model load, resumable, shared between torchrun ranks (ursa_core.batch).

Before any weight loads: the evaluation preset's settings are applied (ursa_core.batch.presets; an option given on
the command line wins, and the run says so), every output name is computed and checked, every sample's settings
(the command line's, with the item's overrides) pass the same rules as `ursa generate`, memory estimate included,
the output folder is locked for this run (ursa_core.batch.run_lock) and finished outputs made under another seed
rule or other settings are refused (or, with --overwrite-stale, queued to be regenerated). A bad item is one line
naming the item, the value and the rule.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from .. import rules
from ..batch.presets import PROTOCOLS, Protocol
from ..batch.prompt_sets import (MANIFEST, Claims, Job, PromptSet, prompt_format, read_prompt_set, run_jobs,
                                 stale_outputs)
from ..batch.run_lock import acquire
from ..checkpoint.defaults import ModelDefaults, identify, resolve
from ..checkpoint.tiny import model_folder
from ..errors import InputError
from ..files.atomic import TEMP_MARK, atomic_file, check_writable
from ..files.media import write_frames
from ..model.config import TransformerConfig
from ..parallel.distributed import barrier, init_from_env, process_device
from ..runtime.speed import SpeedOptions
from ..sampling.preflight import check_options, checkpoint_rules
from ..visual_tokenizer.codec import decode_tokens
from ..visual_tokenizer.geometry import VisualGeometry
from .arguments import DEFAULTS, PRESET_OPTIONS, Request, request, speed_options
from .generate_command import check_model_files, checked_sample, load_for_cli, read_images, sample_tokens

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
# A sample's settings that change its pixels: recorded per output and compared on resume (images by content);
# speed options (attention, sampler, compile, placement) are recorded apart and never make an output stale.
COMPARED = ("frames", "height", "width", "steps", "guidance", "guidance_trunc", "shift", "motion")
SPEED_RECORDED = ("attention", "compile", "low_vram", "blocks_on_gpu", "weight_dtype", "vq_device", "text_device")
SHOWN = {"guidance": "cfg"}   # the command line's name of a setting, where it differs


@dataclass(frozen=True)
class BatchBase:
    """What every sample of a set shares: the command line's flags and options, checked once."""
    flags: dict          # the flag values (no --image / --last-image: items bring their own)
    defaults: ModelDefaults
    speed: SpeedOptions
    dtype: torch.dtype
    device: torch.device
    folder: Path
    config: TransformerConfig   # the checkpoint's rules (checkpoint_rules), read once for the whole set
    geometry: VisualGeometry
    prompts_dir: Path
    loras: tuple = ()    # (LoRAFile, strength) of every --lora, read and matched before any weight loads


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
        # its images are read here too, so an unreadable one is refused before the model loads, not hours into the set
        checked_sample(run, base.config, base.geometry, base.speed, base.dtype, base.device)
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
            raise InputError(f"item {_shown(job)}: {exc}") from None
        frames = {r.settings.frames for r in plans[job.key]}
        image_out = job.out.endswith(".png")
        if image_out != (frames == {1}):
            raise InputError(f"item {_shown(job)}: frames={sorted(frames)[0]} does not fit its output {job.out} "
                             f"({'images need --frames 1' if image_out else 'videos need --frames 5 or more'})")
    return plans


def _shown(job: Job) -> str:
    """A job as a message names it: its id, or the start of its prompt."""
    return repr(job.samples[0].identity.split("\n")[0][:60])


def _file_sha256(path: Optional[str]) -> Optional[str]:
    return None if not path else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _lora_record(lora, value: float) -> list:
    """[file hash, strength], and a PEFT adapter's config hash: its lora_alpha / alpha_pattern / use_rslora change
    the pixels as much as its weights do."""
    record = [_file_sha256(lora.source)[:16], value]
    return [*record, _file_sha256(lora.config)[:16]] if lora.config else record


def model_fingerprint(folder: Path, flags: dict, loras: tuple = ()) -> dict:
    """The checkpoint as its outputs record it: its name and the hashes of its two configs (read before loading),
    and what changes its transformer: fine-tuned weights (name and size: hashing gigabytes would stall the start)
    and each LoRA (its file's hash, its strength, and a PEFT adapter's config hash: its alphas set the scales)."""
    found = {"name": folder.name, **{f"{part}_config": _file_sha256(str(folder / part / "config.json"))[:16]
                                     for part in ("transformer", "vae")}}
    weights = flags.get("transformer_weights")
    if weights:
        found["transformer_weights"] = {"name": Path(weights).name, "bytes": Path(weights).stat().st_size}
    if loras:
        found["lora"] = [_lora_record(lora, value) for lora, value in loras]
    return found


def describer(plans: dict, base: "BatchBase", protocol: Optional[Protocol]):
    """describe(job) for ursa_core.batch.prompt_sets.run_jobs: the model, the protocol and each sample's settings
    that change its pixels, under the command line's names."""
    model, cache = model_fingerprint(base.folder, base.flags, base.loras), {}
    dtype = str(base.dtype).replace("torch.", "")

    def settings(run: Request) -> dict:
        if id(run) not in cache:
            values = {SHOWN.get(name, name): getattr(run.settings, name) for name in COMPARED}
            cache[id(run)] = {**values, "negative": run.negative, "resize": run.resize, "dtype": dtype,
                              "weight_dtype": base.speed.weight_dtype, "image_sha256": _file_sha256(run.image),
                              "last_image_sha256": _file_sha256(run.last_image)}
        return cache[id(run)]

    def describe(job: Job) -> dict:
        return {"model": model, "protocol": protocol.describe() if protocol else None,
                "settings": [settings(run) for run in plans[job.key]]}
    return describe


def apply_protocol(args: argparse.Namespace, fmt: str) -> tuple[argparse.Namespace, Optional[Protocol], dict]:
    """The run's flags: a flag given on the command line, else the format's reference protocol, else the command
    line's default. Returns them, the protocol and {flag: (given, reference)} where they differ."""
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
    settings = ", ".join(f"{SHOWN.get(k, k)}={v}" for k, v in protocol.settings.items() if k != "negative")
    line = f"{protocol.describe()}: {settings}" + (", its negative prompt" if protocol.settings.get("negative")
                                                    else "")
    if overridden:
        line += "; differs from it: " + ", ".join(f"{SHOWN.get(k, k)}={g!r} (reference {r!r})"
                                                   for k, (g, r) in overridden.items())
    return line


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
        for runs in plans.values():
            for run in runs:
                if run.settings.height != run.settings.width:
                    raise InputError(f"--height {run.settings.height} --width {run.settings.width}: {protocol.name}'s "
                                     f"scorer crops square tiles of the grid; give equal sizes")


def check_set(args: argparse.Namespace, folder: Path, device: torch.device
              ) -> tuple[PromptSet, "BatchBase", dict, Optional[Protocol], dict]:
    """Every check that needs no weights and no other rank: the preset's settings, the set and its names, what its
    samples share and each sample's checked request."""
    if not (folder / "vae" / "config.json").is_file():
        raise InputError(f"--model {folder}: has no vae/config.json; a batch decodes every output")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"--outdir {outdir}: is a file; give a folder")
    fmt = prompt_format(args.prompts, args.format)
    args, protocol, overridden = apply_protocol(args, fmt)
    config, geometry = checkpoint_rules(folder)
    loras = check_model_files(args, config)
    defaults = identify(folder, config.hidden_size, geometry).defaults
    frames = resolve(defaults, args.preset, frames=args.frames).frames   # unset: the model's clip (an image set: 1)
    prompt_set = read_prompt_set(args.prompts, fmt, args.samples, args.seed, ".png" if frames == 1 else ".mp4",
                                 args.prompt_field)
    speed = speed_options(args)
    dtype = check_options(args.dtype, speed, args.sampler, device)
    flags = {**vars(args), "image": None, "last_image": None}
    prompts = Path(args.prompts)
    base = BatchBase(flags, defaults, speed, dtype, device, folder, config, geometry,
                     prompts if prompts.is_dir() else prompts.parent, tuple(loras))
    plans = plan_samples(prompt_set.jobs, base)
    _check_square(protocol, plans)
    return prompt_set, base, plans, protocol, overridden


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


def run_batch(args: argparse.Namespace, session=None) -> int:
    """`ursa batch`; `session`: this rank's ursa_core.parallel.ranks.RankSession under torchrun (None: one
    process)."""
    folder = model_folder(args.model)
    rank, world = (session.rank, session.world) if session else (0, 1)
    prompt_set, base, plans, protocol, overridden = check_set(args, folder, process_device(args.device, session))
    describe = describer(plans, base, protocol)
    outdir = Path(args.outdir)
    check_writable(outdir / MANIFEST, "--outdir")   # a folder that cannot be written is refused before any load
    lock = acquire(outdir, world) if rank == 0 else None   # the ranks of one launch are one run
    try:
        if rank == 0:
            _refuse_or_replace(stale_outputs(prompt_set.jobs, outdir, describe), outdir, args.overwrite_stale)
            _announce(args, prompt_set, protocol, overridden, outdir, world, lock)
        return _render_set(args, prompt_set, plans, base, protocol, describe, outdir, session)
    finally:
        if lock is not None:
            lock.release()


def _announce(args, prompt_set: PromptSet, protocol, overridden: dict, outdir: Path, world: int, lock) -> None:
    if lock.took_over:
        print(f"took over the lock of a run that is gone (pid {lock.took_over['pid']})")
    for line in filter(None, [describe_protocol(protocol, overridden), *prompt_set.notes]):
        print(line)
    print(f"{len(prompt_set.jobs)} outputs in {outdir} from {args.prompts}, {world} rank(s)", flush=True)


def _render_set(args, prompt_set: PromptSet, plans: dict, base: "BatchBase", protocol, describe, outdir: Path,
                session) -> int:
    rank, world, device = init_from_env(args.device, session)   # every rank is past its checks (they write probes)
    if rank == 0 and (stale := remove_stale_temporaries(outdir)):
        print(f"removed {stale} unfinished temporary file(s) of an earlier run")
    barrier()   # no rank starts writing before the stale temporaries are gone
    model = load_for_cli(base.folder, device, base.dtype, base.speed, args.transformer_weights,   # the preset's dtype
                         base.loras)
    fps = protocol.fps if protocol is not None and protocol.fps else model.geometry.fps

    def render(job: Job, target: Path, publish) -> None:
        pixels = []
        for sample, run in zip(job.samples, plans[job.key]):
            run = replace(run, settings=replace(run.settings, seed=sample.seed))
            pixels.append(decode_tokens(model, sample_tokens(model, run, read_images(run), sample.prompt)))
        write_side_files(outdir, job)
        write_frames(grid2x2(pixels) if job.layout == "grid2x2" else pixels[0], target, fps=fps,
                     before_rename=publish)

    jobs = prompt_set.jobs
    info = {"device": str(device), "speed": {name: getattr(base.speed, name) for name in SPEED_RECORDED},
            "sampler": args.sampler}
    claims, progress = Claims(len(jobs), session.store if session else None), SetProgress() if rank == 0 else None
    report = run_jobs(jobs, outdir, render, claims, rank=rank, progress=progress, describe=describe, info=info)
    barrier()
    if progress is not None and claims.finished() != progress.last:  # the other ranks finished the last jobs
        progress(claims.finished(), len(jobs), claims.rendered())
    print(f"rank {rank}: wrote {len(report.done)}, skipped {len(report.skipped)} finished, "
          f"{report.seconds:.1f} s", flush=True)
    return 0
