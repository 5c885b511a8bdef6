"""The reference evaluation protocols of baaivision/URSA as `ursa batch` presets: GenEval, DPG-Bench, VBench.

Each preset reads the benchmark's own prompt files as they are, names the outputs as the benchmark's scorer reads
them and carries the sampling settings of the reference script, `evaluations/<bench>/sample.py` of baaivision/URSA
at commit 626dfd36c6f36e118ec516a69f27352df63259d1 (its defaults, and the commands of docs/evaluation.md; the later
4d376ecf only fixes which rank samples which VBench prompt). All three sample in fp16 with guidance_trunc 0.9 and
the checkpoint's time shift (the pipeline's defaults). Where `ursa batch` departs from the reference on purpose:
the reference seeds one torch.Generator per rank with 1337 + rank and draws the samples in batch order, so its
images depend on the GPU count and batch size; here each sample has its own seed (ursa_core.batch.jobs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from .jobs import Job, Sample, prompt_of, read_json_list, read_json_lines, read_text, seeds_of
from .names import check_name, output_stem

REFERENCE = "baaivision/URSA@626dfd3"
VBENCH_NEGATIVE = ("worst quality, low quality, inconsistent motion, static, still, blurry, jittery, distorted, "
                   "ugly")


@dataclass(frozen=True)
class Protocol:
    """A reference protocol: the script it follows and its sampling settings (ursa batch option -> value)."""
    name: str
    source: str
    settings: dict
    prompt_fields: tuple[str, ...]       # the texts a set can sample; the first is the reference's
    fps: Optional[float] = None
    square: bool = False                 # the scorer crops square tiles, so height must equal width

    def describe(self) -> str:
        return f"{self.name} protocol of {REFERENCE} {self.source}"


_IMAGES_1024 = {"height": 1024, "width": 1024, "steps": 25, "guidance": 7.0, "frames": 1, "negative": "",
                "dtype": "fp16"}
GENEVAL = Protocol("GenEval", "evaluations/geneval/sample.py", {**_IMAGES_1024, "samples": 4},
                   ("dense_prompt", "prompt"))
DPGBENCH = Protocol("DPG-Bench", "evaluations/dpgbench/sample.py", {**_IMAGES_1024, "samples": 4}, ("prompt",),
                    square=True)
VBENCH = Protocol("VBench", "evaluations/vbench/sample.py",
                  {"height": 320, "width": 512, "steps": 50, "guidance": 7.0, "frames": 49, "motion": 9.0,
                   "negative": VBENCH_NEGATIVE, "dtype": "fp16", "samples": 5}, ("longer", "short"), fps=12.0)
PROTOCOLS = {"geneval": GENEVAL, "dpgbench": DPGBENCH, "vbench": VBENCH}


def chosen_field(protocol: Protocol, asked: Optional[str], available: bool, where: str) -> tuple[str, list[str]]:
    """The field a set samples: the reference's (first) by default, where the set has it; else the next, said in a
    note. `available`: whether the set holds the reference's field at all."""
    reference, other = protocol.prompt_fields[0], protocol.prompt_fields[-1]
    if asked is not None and asked not in protocol.prompt_fields:
        raise InputError(f"--prompt-field {asked!r}: a {protocol.name} set offers {list(protocol.prompt_fields)}")
    if asked in (None, reference) and available:
        return reference, []
    if asked == reference:
        raise InputError(f"--prompt-field {reference}: {where} has no {reference!r} prompts; "
                         f"use --prompt-field {other}")
    note = [] if asked else [f"{where} has no {reference!r} prompts (the reference samples them): sampling "
                             f"{other!r}"]
    return other, note


def _geneval_items(path: Path) -> tuple[list[tuple[int, dict, Any]], bool]:
    """(folder index, prompt entry, metadata object) of each item and whether they carry dense prompts. GenEval's
    own evaluation_metadata.jsonl (one object a line: tag, include, prompt, ...) or the reference's prompts.json
    ({id, prompt, dense_prompt}) with GenEval's metadata.jsonl beside it."""
    if path.suffix == ".jsonl":
        items = [(index, entry, entry) for index, (_, entry) in enumerate(read_json_lines(path))]
    else:
        meta_path = path.with_name("metadata.jsonl")
        if not meta_path.is_file():
            raise InputError(f"{path}: GenEval needs metadata.jsonl beside prompts.json ({meta_path} is missing)")
        metadata = [entry for _, entry in read_json_lines(meta_path)]
        items = []
        for position, entry in enumerate(read_json_list(path)):
            ident = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(ident, int) or isinstance(ident, bool) or not 0 <= ident < len(metadata):
                raise InputError(f"{path}: item {position} needs an integer id in [0, {len(metadata)}) of "
                                 f"metadata.jsonl")
            items.append((ident, entry, metadata[ident]))
    for index, entry, meta in items:
        if not isinstance(entry, dict) or not isinstance(meta, dict):
            raise InputError(f"{path}: item {index} is not a JSON object")
    return items, any("dense_prompt" in entry for _, entry, _ in items)


def geneval_jobs(path: Path, samples: int, base_seed: int, field: Optional[str] = None) -> tuple[list[Job], list]:
    """GenEval: `<index:05d>/samples/<n:05d>.png` and `<index:05d>/metadata.jsonl` (the item's metadata object, as
    json.dump writes it), the layout GenEval's evaluate_images.py reads; the index is the item's identity."""
    items, dense = _geneval_items(path)
    field, notes = chosen_field(GENEVAL, field, dense, str(path))
    jobs = []
    for index, entry, meta in items:
        text = prompt_of(entry, f"{path}: item {index}", field)
        folder, identity = f"{index:05d}", str(index)
        side = ((f"{folder}/metadata.jsonl", json_dump(meta)),)
        for n, seed in enumerate(seeds_of(identity, entry.get("seed"), base_seed, samples, f"item {index}")):
            jobs.append(Job(f"{folder}#{n}", f"{folder}/samples/{n:05d}.png", (Sample(text, seed, identity, n),),
                            side_files=side))
    return jobs, notes


def json_dump(value: Any) -> str:
    """What Python's json.dump writes (the reference's and GenEval's own way of writing metadata.jsonl)."""
    return json.dumps(value)


def dpgbench_jobs(path: Path, samples: int, base_seed: int, field: Optional[str] = None) -> tuple[list[Job], list]:
    """DPG-Bench: prompts.json ({id, prompt}); one `<id>.png` per prompt holding the 2x2 grid of its four samples
    in row-major order, which compute_dpg_bench.py crops into four square tiles. The scorer takes the file name up
    to its first '.' as the id, so an id may not contain one."""
    chosen_field(DPGBENCH, field, True, str(path))
    if samples != 4:
        raise InputError(f"--samples {samples}: DPG-Bench scores a 2x2 grid of exactly 4 samples per prompt")
    jobs = []
    for index, entry in enumerate(read_json_list(path)):
        if not isinstance(entry, dict) or "id" not in entry:
            raise InputError(f"{path}: item {index} needs an 'id' and a 'prompt'")
        ident, text = str(entry["id"]), prompt_of(entry, f"{path}: item {index}")
        if "." in ident:
            raise InputError(f"{path}: item {index}: id {ident!r} contains '.': DPG-Bench's scorer reads the id "
                             f"as the file name up to its first '.'")
        stem, cut = output_stem(ident, ".png", ".png", f"{path}: item {index}: id")
        seeds = seeds_of(ident, entry.get("seed"), base_seed, 4, f"item {index}")
        jobs.append(Job(ident, f"{stem}.png", tuple(Sample(text, s, ident, n) for n, s in enumerate(seeds)),
                        layout="grid2x2", full_name=f"{ident}.png" if cut else None))
    return jobs, []


def _vbench_tracks(folder: Path) -> list[tuple[str, list[str], list[str]]]:
    """(track, short prompts, longer prompts) of each `<track>.txt` + `<track>_longer.txt` pair, sorted by track
    (the reference sorts the file names and pairs each track with its _longer file)."""
    files = {p.stem: p for p in folder.glob("*.txt")}
    tracks = []
    for stem in sorted(files):
        if stem.endswith("_longer"):
            if stem[:-len("_longer")] not in files:
                raise InputError(f"{files[stem]}: no {stem[:-len('_longer')]}.txt beside it (its short prompts "
                                 f"name the videos)")
            continue
        check_name(stem, f"{folder}: track")
        shorts = _lines(files[stem])
        longer = files.get(stem + "_longer")
        longs = _lines(longer) if longer is not None else None
        if longs is not None and len(longs) != len(shorts):
            raise InputError(f"{longer}: {len(longs)} prompts but {stem}.txt has {len(shorts)}")
        tracks.append((stem, shorts, longs))
    if not tracks:
        raise InputError(f"{folder}: no <track>.txt prompt files found for VBench")
    return tracks


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def vbench_jobs(folder: Path, samples: int, base_seed: int, field: Optional[str] = None) -> tuple[list[Job], list]:
    """VBench's suite: `<track>.txt` (short prompts, which name the videos) and `<track>_longer.txt` (the prompts
    the reference samples); outputs `<track>/<short prompt>-<n>.mp4`, the names VBench's evaluator looks for."""
    tracks = _vbench_tracks(folder)
    lacking = [track for track, _, longs in tracks if longs is None]
    if lacking and len(lacking) < len(tracks):
        raise InputError(f"{folder}: {lacking[0]}.txt has no {lacking[0]}_longer.txt beside it, while other tracks "
                         f"have their longer prompts")
    field, notes = chosen_field(VBENCH, field, not lacking, str(folder))
    jobs = []
    for track, shorts, longs in tracks:
        for line, short in enumerate(shorts):
            identity = f"{track}/{short}"
            stem, cut = output_stem(short, f"-{samples - 1}.mp4", ".mp4", f"{track}.txt line {line + 1}: prompt")
            text = longs[line] if field == "longer" else short
            for n, seed in enumerate(seeds_of(identity, None, base_seed, samples, identity)):
                jobs.append(Job(f"{identity}#{n}", f"{track}/{stem}-{n}.mp4", (Sample(text, seed, identity, n),),
                                full_name=f"{track}/{short}-{n}.mp4" if cut else None))
    return jobs, notes
