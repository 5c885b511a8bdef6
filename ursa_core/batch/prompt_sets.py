"""Prompt sets: read them, name their outputs as the evaluation tools expect, share them between ranks, resume.

A *job* is one output file (a clip, an image, or DPG-Bench's 2x2 grid of four samples). Jobs are numbered in a
fixed order; every rank of a `torchrun` launch takes the next unclaimed number from one atomic counter in
torch.distributed's own key-value store, so fast ranks take more jobs and no job is taken twice. A job whose output
exists is finished (outputs are renamed into place only when complete), so a rerun after a crash or a killed rank
redoes exactly the jobs without an output.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Optional, Sequence

from .. import rules
from ..errors import InputError, OutputError

FORMATS = ("auto", "txt", "jsonl", "geneval", "dpgbench", "vbench")
# Per-item keys a JSONL line may carry besides the prompt; anything else is refused, so a typo is never ignored.
ITEM_KEYS = ("prompt", "id", "seed", "frames", "image", "last_image", "negative", "height", "width", "steps", "cfg",
             "motion")
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Sample:
    """One generation: a prompt, its seed and per-item settings (frames, image, negative, cfg, ...)."""
    prompt: str
    seed: int
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One output file and the samples that make it ("grid2x2" puts four images in one PNG, as DPG-Bench wants)."""
    key: str
    out: str                      # relative to the output folder
    samples: tuple[Sample, ...]
    layout: str = "single"
    side_files: tuple[tuple[str, str], ...] = ()   # (relative path, text) written before the output itself


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "prompt"


def _sample_seeds(base: int, count: int) -> list[int]:
    """Sample n of a prompt uses seed + n: transparent, and a given seed is used as given for sample 0."""
    return [int(base) + n for n in range(count)]


def _item_seed(item: dict, index: int, base_seed: int, samples: int = 1) -> int:
    seed = item.get("seed")
    if seed is None:
        from ..sampling.generate import derive_seed
        return derive_seed(base_seed, 7, index) % (1 << 31)   # stable per position, independent across items
    try:  # the seed rule of every other input, leaving room for seed + n of the last sample
        return rules.integer("seed", seed, 0, rules.SEED_MAX - (samples - 1))
    except InputError as exc:
        raise InputError(f"item {index}: {exc}") from None


def _prompt(entry: Any, index: int, where: str, key: str = "prompt") -> str:
    """The one rule for a prompt set's prompt: a non-empty string."""
    text = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: item {index} has no {key!r} (a non-empty string is needed)")
    return text


def _check_item(item: Any, index: int, where: str) -> dict:
    if not isinstance(item, dict):
        raise InputError(f"{where}: item {index} is {type(item).__name__}, expected an object with a 'prompt'")
    unknown = sorted(set(item) - set(ITEM_KEYS))
    if unknown:
        raise InputError(f"{where}: item {index} has unknown key(s) {unknown}; allowed: {list(ITEM_KEYS)}")
    _prompt(item, index, where)
    return item


def _read_text(path: Path) -> str:
    """A prompt file's text, or one line saying why it cannot be read (a folder, permissions, not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--prompts {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"--prompts {path}: cannot be read ({exc.strerror or exc})") from None


def _plain_jobs(items: Sequence[dict], samples: int, base_seed: int, ext: str) -> list[Job]:
    jobs = []
    for index, item in enumerate(items):
        name = str(item["id"]) if "id" in item else f"{index:05d}-{_slug(item['prompt'], 40)}"
        settings = {k: v for k, v in item.items() if k not in ("prompt", "id", "seed")}
        item_ext = ext if "frames" not in settings else (".png" if settings["frames"] == 1 else ".mp4")
        for n, seed in enumerate(_sample_seeds(_item_seed(item, index, base_seed, samples), samples)):
            jobs.append(Job(f"{name}#{n}", f"{name}-{n}{item_ext}", (Sample(item["prompt"], seed, settings),)))
    return jobs


def read_txt(path: Path) -> list[dict]:
    lines = _read_text(path).splitlines()
    return [{"prompt": line.strip()} for line in lines if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    items = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(_check_item(json.loads(line), len(items), f"{path}:{number}"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
    return items


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of prompts, found {type(data).__name__}")
    return data


def geneval_jobs(path: Path, samples: int, base_seed: int) -> list[Job]:
    """GenEval: prompts.json ({id, prompt, dense_prompt}) + metadata.jsonl beside it; outputs
    `<id:05d>/samples/<n:05d>.png` and `<id:05d>/metadata.jsonl`, the layout its evaluator reads."""
    prompts = _read_json_list(path)
    meta_path = path.with_name("metadata.jsonl")
    if not meta_path.is_file():
        raise InputError(f"{path}: GenEval needs metadata.jsonl beside prompts.json ({meta_path} is missing)")
    metadata = [line for line in _read_text(meta_path).splitlines() if line.strip()]
    jobs = []
    for index, entry in enumerate(prompts):
        ident = entry.get("id", index) if isinstance(entry, dict) else index
        if not isinstance(entry, dict) or not isinstance(ident, int) or not 0 <= ident < len(metadata):
            raise InputError(f"{path}: item {index} needs an integer id in [0, {len(metadata)}) of metadata.jsonl")
        text = _prompt(entry, index, str(path))
        folder = f"{ident:05d}"
        side = ((f"{folder}/metadata.jsonl", metadata[ident] + "\n"),)
        for n, seed in enumerate(_sample_seeds(_item_seed(entry, index, base_seed, samples), samples)):
            jobs.append(Job(f"{folder}#{n}", f"{folder}/samples/{n:05d}.png", (Sample(text, seed),), side_files=side))
    return jobs


def dpgbench_jobs(path: Path, samples: int, base_seed: int) -> list[Job]:
    """DPG-Bench: prompts.json ({id, prompt}); one `<id>.png` per prompt holding a 2x2 grid of four samples."""
    if samples != 4:
        raise InputError(f"--samples {samples}: DPG-Bench scores a 2x2 grid of exactly 4 samples per prompt")
    jobs = []
    for index, entry in enumerate(_read_json_list(path)):
        if not isinstance(entry, dict) or "id" not in entry:
            raise InputError(f"{path}: item {index} needs an 'id' and a 'prompt'")
        text = _prompt(entry, index, str(path))
        seeds = _sample_seeds(_item_seed(entry, index, base_seed, 4), 4)
        jobs.append(Job(str(entry["id"]), f"{entry['id']}.png", tuple(Sample(text, s) for s in seeds),
                        layout="grid2x2"))
    return jobs


def vbench_jobs(folder: Path, samples: int, base_seed: int) -> list[Job]:
    """VBench's standard suite: `<track>.txt` (short prompts, which name the files) and `<track>_longer.txt`
    (the prompts sampled); outputs `<track>/<short prompt>-<n>.mp4`, the names VBench's evaluator matches."""
    jobs, index = [], 0
    for short_file in sorted(p for p in folder.glob("*.txt") if not p.stem.endswith("_longer")):
        long_file = short_file.with_name(short_file.stem + "_longer.txt")
        shorts = read_txt(short_file)
        longs = read_txt(long_file) if long_file.is_file() else shorts
        if len(longs) != len(shorts):
            raise InputError(f"{long_file}: {len(longs)} prompts but {short_file.name} has {len(shorts)}")
        for short, long in zip(shorts, longs):
            name = short["prompt"].replace("/", " ")
            for n, seed in enumerate(_sample_seeds(_item_seed({}, index, base_seed), samples)):
                jobs.append(Job(f"{short_file.stem}/{name}#{n}", f"{short_file.stem}/{name}-{n}.mp4",
                                (Sample(long["prompt"], seed),)))
            index += 1
    if not jobs:
        raise InputError(f"{folder}: no <track>.txt prompt files found for VBench")
    return jobs


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "vbench"
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".txt":
        return "txt"
    if path.suffix == ".json":
        return "geneval" if path.with_name("metadata.jsonl").is_file() else "dpgbench"
    raise InputError(f"--prompts {path}: cannot tell its format from the name; pass --format {FORMATS[1:]}")


def read_jobs(path: str | Path, fmt: str = "auto", samples: int = 1, seed: int = 0, ext: str = ".mp4") -> list[Job]:
    """The prompt set at `path` as a list of jobs in a fixed order (the same on every rank and every run)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {FORMATS}")
    if not path.exists():
        raise InputError(f"--prompts {path}: no such file or folder")
    rules.integer("samples", samples, 1, rules.MAX_SAMPLES)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if path.is_dir() != (fmt == "vbench"):
        raise InputError(f"--prompts {path}: format {fmt!r} reads " + ("a folder of <track>.txt files"
                         if fmt == "vbench" else "a file, not a folder"))
    if fmt == "txt":
        jobs = _plain_jobs(read_txt(path), samples, seed, ext)
    elif fmt == "jsonl":
        jobs = _plain_jobs(read_jsonl(path), samples, seed, ext)
    elif fmt == "geneval":
        jobs = geneval_jobs(path, samples, seed)
    elif fmt == "dpgbench":
        jobs = dpgbench_jobs(path, samples, seed)
    else:
        jobs = vbench_jobs(path, samples, seed)
    if not jobs:
        raise InputError(f"--prompts {path}: no prompts found")
    _check_unique(jobs)
    return jobs


def _inside(relative: str) -> bool:
    """An output name from a prompt set (an item's id becomes a path) stays inside the output folder."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    return bool(parts) and not PurePosixPath(relative).is_absolute() and ".." not in parts


def _check_unique(jobs: Iterable[Job]) -> None:
    """Every output (and side file) inside the output folder, and no two items writing the same one."""
    seen: dict[str, str] = {}
    for job in jobs:
        for relative in (job.out, *(side for side, _ in job.side_files)):
            if not _inside(relative):
                raise InputError(f"item {job.key.split('#')[0]!r} would write {relative!r} outside --outdir: ids "
                                 f"name files inside it (no '..', no absolute path)")
        if job.out in seen:
            raise InputError(f"two items write the same output {job.out!r} ({seen[job.out]} and {job.key}): "
                             f"give them distinct ids")
        seen[job.out] = job.key


class Claims:
    """Hands out job numbers: in order in one process; from an atomic counter shared by all ranks under
    torch.distributed (its own store, so no extra server or port is needed)."""

    def __init__(self, total: int, store=None, prefix: str = "ursa_batch"):
        self.total, self.store, self.prefix, self.local = total, store, prefix, 0
        self.counts = {"done": 0, "rendered": 0}   # single-process tallies (the store keeps them under torchrun)

    def next(self) -> Optional[int]:
        if self.store is None:
            index, self.local = self.local, self.local + 1
        else:
            index = int(self.store.add(f"{self.prefix}/next", 1)) - 1
        return index if index < self.total else None

    def _add(self, name: str, amount: int) -> int:
        if self.store is None:
            self.counts[name] += amount
            return self.counts[name]
        return int(self.store.add(f"{self.prefix}/{name}", amount))

    def finished(self) -> int:
        """Jobs finished by all ranks so far, skipped ones included (for the set's progress bar)."""
        return self._add("done", 0)

    def rendered(self) -> int:
        """Jobs rendered by all ranks so far (skipped ones excluded: the set's rate counts only real work)."""
        return self._add("rendered", 0)

    def mark_done(self, rendered: bool = True) -> None:
        self._add("done", 1)
        if rendered:
            self._add("rendered", 1)


def distributed_store():
    """torch.distributed's key-value store when running under an initialised process group, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from torch.distributed.distributed_c10d import _get_default_store
    return _get_default_store()


def append_manifest(folder: Path, record: dict) -> None:
    """One JSON line per finished job, written with one O_APPEND write so lines of several ranks never mix."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        fd = os.open(folder / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"{folder / MANIFEST}: cannot append ({exc.strerror or exc})") from None


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_jobs(jobs: Sequence[Job], folder: str | Path, render: Callable[[Job, Path], None], claims: Claims,
             rank: int = 0, progress: Optional[Callable[[int, int, int], None]] = None) -> BatchReport:
    """Run every job this rank claims: skip finished ones, render the rest, log each to the manifest.

    `render(job, target)` must write the job's output to `target` atomically (renamed into place when complete);
    a dict it returns (the settings used, ...) is added to the job's manifest line. `progress(finished, total,
    rendered)` follows the whole set (all ranks).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report, started = BatchReport(), time.time()
    while (index := claims.next()) is not None:
        job = jobs[index]
        target = folder / job.out
        skip = target.is_file()
        if skip:
            report.skipped.append(job.key)
        else:
            job_started = time.time()
            extra = render(job, target)
            append_manifest(folder, {"job": job.key, "out": job.out, "rank": rank,
                                     "samples": [asdict(s) for s in job.samples],
                                     "seconds": round(time.time() - job_started, 3), "finished": time.time(),
                                     **(extra or {})})
            report.done.append(job.key)
        claims.mark_done(rendered=not skip)
        if progress is not None:
            progress(claims.finished(), len(jobs), claims.rendered())
    report.seconds = time.time() - started
    return report
