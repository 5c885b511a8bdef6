"""What a prompt set becomes: jobs (one output file each) of samples, and the one rule that gives a sample its seed.

The seed rule. A sample's seed is a function of the base seed (`--seed`), the item's identity and the sample's
index n, never of the item's position, so reordering, inserting or deleting items changes no other item's seed:

    seed = numpy.random.SeedSequence(entropy=base_seed,
                                     spawn_key=(*sha256(identity) as 8 little-endian uint32 words, n)
                                     ).generate_state(1, numpy.uint64)[0]

An item's identity is its id where the format has one (a JSONL "id", GenEval's prompt index, DPG-Bench's id,
VBench's "<track>/<short prompt>"), else its prompt text, a newline and its occurrence number (0 for the first item
with that text, 1 for the second, ...). An item that gives its own "seed" uses seed + n. Every output's manifest
line records the rule (SEED_RULE), each sample's identity, index and seed; `ursa generate --seed <that seed>` with
the same prompt and settings makes the same output.
"""
from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import rules
from ..errors import InputError

SEED_RULE = "sha256-seedsequence-v1"   # the rule's name in the manifest: outputs made under another are stale


def sample_seed(base_seed: int, identity: str, sample: int) -> int:
    """The seed of sample `sample` of the item `identity` (module docstring)."""
    words = struct.unpack("<8I", hashlib.sha256(identity.encode("utf-8")).digest())
    state = np.random.SeedSequence(entropy=int(base_seed), spawn_key=(*words, int(sample)))
    return int(state.generate_state(1, np.uint64)[0])


def prompt_identity(prompt: str, occurrence: int) -> str:
    """The identity of an item without an id: its prompt and which occurrence of that prompt it is."""
    return f"{prompt}\n{occurrence}"


def prompt_identities(prompts: list[str]) -> list[str]:
    """Each prompt's identity, counting repeated prompts in file order."""
    seen: Counter = Counter()
    identities = []
    for prompt in prompts:
        identities.append(prompt_identity(prompt, seen[prompt]))
        seen[prompt] += 1
    return identities


def short_hash(text: str, chars: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:chars]


@dataclass(frozen=True)
class Sample:
    """One generation: a prompt, its seed (from `identity` and sample index `n`) and per-item settings."""
    prompt: str
    seed: int
    identity: str
    n: int = 0
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One output file and the samples that make it ("grid2x2" puts four images in one PNG, as DPG-Bench wants)."""
    key: str
    out: str                      # relative to the output folder
    samples: tuple[Sample, ...]
    layout: str = "single"
    side_files: tuple[tuple[str, str], ...] = ()   # (relative path, text) written before the output itself
    full_name: Optional[str] = None                # the name before it was shortened (ursa_core.batch.names)


def seeds_of(identity: str, given: Any, base_seed: int, count: int, where: str) -> list[int]:
    """Seeds of samples 0..count-1 of one item: given + n for an item with its own seed, else the rule."""
    if given is None:
        return [sample_seed(base_seed, identity, n) for n in range(count)]
    try:  # the seed rule of every other input, leaving room for seed + n of the last sample
        first = rules.integer("seed", given, 0, rules.SEED_MAX - (count - 1))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return [first + n for n in range(count)]


def prompt_of(entry: Any, where: str, key: str = "prompt") -> str:
    """The one rule for a prompt set's prompt: a non-empty string."""
    text = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where} has no {key!r} (a non-empty string is needed)")
    return text


def read_text(path: Path) -> str:
    """A prompt file's text, or one line saying why it cannot be read (a folder, permissions, not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--prompts {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"--prompts {path}: cannot be read ({exc.strerror or exc})") from None


def read_json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file."""
    values = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                values.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return values


def read_json_list(path: Path) -> list:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of prompts, found {type(data).__name__}")
    return data
