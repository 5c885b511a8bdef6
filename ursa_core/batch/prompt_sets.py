"""Prompt sets: read them, name their outputs as the evaluation tools expect, share them between ranks, resume.

A *job* is one output file (a clip, an image, or DPG-Bench's 2x2 grid of four samples). Jobs are numbered in a
fixed order; every rank of a `torchrun` launch takes the next unclaimed number from one atomic counter in the
launch's key-value store (ursa_core.parallel.ranks), so fast ranks take more jobs and no job is taken twice. Seeds
follow the item, never its position (ursa_core.batch.jobs); the evaluation formats follow the reference protocols
(ursa_core.batch.presets); every output name is checked before anything loads (ursa_core.batch.names).

Resuming: an output is finished when it exists and its manifest line (written just before the output is renamed
into place, so no output exists without one) says it was made under this seed rule with these settings. An output
made under another rule or other settings is stale: `ursa batch` refuses to mix it with new ones, or regenerates it
(--overwrite-stale); a run after a crash or a killed rank redoes exactly the jobs without a finished output.
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
from .jobs import (SEED_RULE, Job, Sample, prompt_identities, prompt_of, read_json_lines, read_text, seeds_of,
                   short_hash)
from .names import output_stem
from .presets import PROTOCOLS, dpgbench_jobs, geneval_jobs, vbench_jobs

FORMATS = ("auto", "txt", "jsonl", "geneval", "dpgbench", "vbench")
# Per-item keys a JSONL line may carry besides the prompt; anything else is refused, so a typo is never ignored.
ITEM_KEYS = ("prompt", "id", "seed", "frames", "image", "last_image", "negative", "height", "width", "steps", "cfg",
             "motion")
MANIFEST = "manifest.jsonl"
__all__ = ["FORMATS", "MANIFEST", "SEED_RULE", "Claims", "Job", "PromptSet", "Sample", "read_jobs",
           "read_prompt_set", "run_jobs", "stale_outputs"]


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "prompt"


def _check_item(item: Any, index: int, where: str) -> dict:
    if not isinstance(item, dict):
        raise InputError(f"{where}: item {index} is {type(item).__name__}, expected an object with a 'prompt'")
    unknown = sorted(set(item) - set(ITEM_KEYS))
    if unknown:
        raise InputError(f"{where}: item {index} has unknown key(s) {unknown}; allowed: {list(ITEM_KEYS)}")
    prompt_of(item, f"{where}: item {index}")
    return item


def _plain_jobs(items: Sequence[dict], samples: int, base_seed: int, ext: str, where: str) -> list[Job]:
    """txt / JSONL: `<id>-<n>.<ext>` for items with an id, else `<prompt slug>-<hash of its identity>-<n>.<ext>`
    (the hash keeps names distinct and independent of the other items)."""
    identities = prompt_identities([item["prompt"] for item in items])
    jobs = []
    for index, item in enumerate(items):
        settings = {k: v for k, v in item.items() if k not in ("prompt", "id", "seed")}
        item_ext = ext if "frames" not in settings else (".png" if settings["frames"] == 1 else ".mp4")
        tail = f"-{samples - 1}{item_ext}"
        if "id" in item:
            identity = key = str(item["id"])
            stem, cut = output_stem(identity, tail, item_ext, f"{where}: item {index}: id")
        else:
            identity = identities[index]
            key = stem = f"{_slug(item['prompt'])}-{short_hash(identity)}"
            cut = False
        for n, seed in enumerate(seeds_of(identity, item.get("seed"), base_seed, samples, f"item {index}")):
            jobs.append(Job(f"{key}#{n}", f"{stem}-{n}{item_ext}",
                            (Sample(item["prompt"], seed, identity, n, settings),),
                            full_name=f"{identity}-{n}{item_ext}" if cut else None))
    return jobs


def read_txt(path: Path) -> list[dict]:
    lines = read_text(path).splitlines()
    return [{"prompt": line.strip()} for line in lines if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    return [_check_item(item, index, f"{path}:{number}")
            for index, (number, item) in enumerate(read_json_lines(path))]


def _is_geneval_metadata(path: Path) -> bool:
    """GenEval's own evaluation_metadata.jsonl: objects with its 'tag' and 'include' keys."""
    first = next(iter(read_json_lines(path)), (0, None))[1]
    return isinstance(first, dict) and {"tag", "include"} <= set(first)


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "vbench"
    if path.suffix == ".jsonl":
        return "geneval" if _is_geneval_metadata(path) else "jsonl"
    if path.suffix == ".txt":
        return "txt"
    if path.suffix == ".json":
        return "geneval" if path.with_name("metadata.jsonl").is_file() else "dpgbench"
    raise InputError(f"--prompts {path}: cannot tell its format from the name; pass --format {FORMATS[1:]}")


def prompt_format(path: str | Path, fmt: str = "auto") -> str:
    """The format of the set at `path` (`fmt`, or detected from the name and content for "auto")."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {FORMATS}")
    if not path.exists():
        raise InputError(f"--prompts {path}: no such file or folder")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if path.is_dir() != (fmt == "vbench"):
        raise InputError(f"--prompts {path}: format {fmt!r} reads " + ("a folder of <track>.txt files"
                         if fmt == "vbench" else "a file, not a folder"))
    return fmt


@dataclass(frozen=True)
class PromptSet:
    """A prompt set as jobs in a fixed order (the same on every rank and every run), its format, and notes to
    show the user (which prompt field is sampled, names that were shortened)."""
    jobs: list[Job]
    format: str
    notes: list[str]


def read_prompt_set(path: str | Path, fmt: str = "auto", samples: int = 1, seed: int = 0, ext: str = ".mp4",
                    prompt_field: Optional[str] = None) -> PromptSet:
    path, fmt = Path(path), prompt_format(path, fmt)
    rules.integer("samples", samples, 1, rules.MAX_SAMPLES)
    if fmt in PROTOCOLS:
        reader = {"geneval": geneval_jobs, "dpgbench": dpgbench_jobs, "vbench": vbench_jobs}[fmt]
        jobs, notes = reader(path, samples, seed, prompt_field)
    else:
        if prompt_field is not None:
            raise InputError(f"--prompt-field {prompt_field!r}: only GenEval and VBench sets offer a choice")
        items = read_txt(path) if fmt == "txt" else read_jsonl(path)
        jobs, notes = _plain_jobs(items, samples, seed, ext, str(path)), []
    if not jobs:
        raise InputError(f"--prompts {path}: no prompts found")
    _check_unique(jobs)
    shortened = sum(job.full_name is not None for job in jobs)
    if shortened:
        notes = notes + [f"{shortened} output name(s) were too long for the filesystem and end in '~<hash>'; "
                         f"{MANIFEST} keeps each full name (full_name)"]
    return PromptSet(jobs, fmt, notes)


def read_jobs(path: str | Path, fmt: str = "auto", samples: int = 1, seed: int = 0, ext: str = ".mp4",
              prompt_field: Optional[str] = None) -> list[Job]:
    """The jobs of the prompt set at `path` (read_prompt_set without its notes)."""
    return read_prompt_set(path, fmt, samples, seed, ext, prompt_field).jobs


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
    """Hands out job numbers: in order in one process; from an atomic counter in the store of a torchrun launch
    (ursa_core.parallel.ranks.RankSession.store, so no extra server or port is needed)."""

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


def latest_records(folder: Path) -> dict[str, dict]:
    """Output path -> its last manifest line (a line that does not parse, from a full disk, is skipped)."""
    records: dict[str, dict] = {}
    try:
        lines = (Path(folder) / MANIFEST).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("out"), str):
            records[record["out"]] = record
    return records


# What makes two outputs the same output: the seed rule, the samples (prompt, identity, index, seed, item
# overrides) and what the caller's `describe` adds (the model and every setting that changes the pixels).
COMPARED = ("job", "out", "seed_rule", "layout", "samples", "model", "protocol", "settings")


def job_record(job: Job, describe: Optional[Callable[[Job], dict]] = None) -> dict:
    """The manifest line of `job` without its timing: what a finished output must have been made with."""
    record = {"job": job.key, "out": job.out, "seed_rule": SEED_RULE, "layout": job.layout,
              "samples": [asdict(sample) for sample in job.samples], **(describe(job) if describe else {})}
    if job.full_name is not None:
        record["full_name"] = job.full_name
    return record


def _difference(old: Any, new: Any, where: str = "") -> Optional[str]:
    """The first place where two JSON values differ, as 'where: old (now new)'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return next(filter(None, (_difference(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(old, new)))),
                    None)
    if old != new:
        shown = [json.dumps(v, ensure_ascii=False) for v in (old, new)]
        return f"{where} = {shown[0][:60]} (this run: {shown[1][:60]})"
    return None


def staleness(record: Optional[dict], expected: dict) -> Optional[str]:
    """Why an existing output whose manifest line is `record` is not the output `expected` describes (None: it is)."""
    if record is None:
        return "it has no manifest line (made by another program, or renamed by hand)"
    if record.get("seed_rule") != expected["seed_rule"]:
        return (f"it was made under seed rule {record.get('seed_rule')!r}, not {expected['seed_rule']!r}"
                if record.get("seed_rule") else "it was made before seeds followed the item (no seed rule recorded)")
    found = _difference(*({key: r.get(key) for key in COMPARED} for r in (record, expected)))
    return None if found is None else f"it was made with {found}"


def stale_outputs(jobs: Sequence[Job], folder: Path,
                  describe: Optional[Callable[[Job], dict]] = None) -> list[tuple[Job, str]]:
    """The jobs whose output exists but was made under another seed rule or other settings, and why."""
    records = latest_records(folder)
    found = []
    for job in jobs:
        if (Path(folder) / job.out).is_file():
            why = staleness(records.get(job.out), job_record(job, describe))
            if why is not None:
                found.append((job, why))
    return found


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_jobs(jobs: Sequence[Job], folder: str | Path, render: Callable[[Job, Path, Callable[[], None]], None],
             claims: Claims, rank: int = 0, progress: Optional[Callable[[int, int, int], None]] = None,
             describe: Optional[Callable[[Job], dict]] = None, info: Optional[dict] = None) -> BatchReport:
    """Run every job this rank claims: skip finished ones, render the rest (stale ones included: the caller has
    refused them already unless they are to be replaced).

    `render(job, target, publish)` writes the job's output to `target` atomically and calls `publish()` once the
    file is complete, just before it is renamed into place (ursa_core.atomic's before_rename): publish appends the
    job's manifest line (job_record with `describe(job)`, this rank, `info` and the time taken), so no output
    ever exists without its line. `progress(finished, total, rendered)` follows the whole set (all ranks).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records, report, started = latest_records(folder), BatchReport(), time.time()
    while (index := claims.next()) is not None:
        job = jobs[index]
        expected = job_record(job, describe)
        skip = (folder / job.out).is_file() and staleness(records.get(job.out), expected) is None
        if skip:
            report.skipped.append(job.key)
        else:
            published: list[bool] = []
            job_started = time.time()

            def publish(expected=expected, job_started=job_started, published=published) -> None:
                append_manifest(folder, {**expected, "rank": rank, **(info or {}),
                                         "seconds": round(time.time() - job_started, 3), "finished": time.time()})
                published.append(True)
            render(job, folder / job.out, publish)
            if not published:
                raise RuntimeError(f"the renderer of {job.out} did not publish its manifest line")
            report.done.append(job.key)
        claims.mark_done(rendered=not skip)
        if progress is not None:
            progress(claims.finished(), len(jobs), claims.rendered())
    report.seconds = time.time() - started
    return report
