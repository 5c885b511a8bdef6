"""The file names a prompt set gives its outputs: checked before anything loads, shortened when too long.

An item's id, a DPG-Bench id or a VBench prompt becomes part of a file name. Such a part must be one name every
filesystem accepts: no NUL or other control character, no '/' or '\\' (a name never makes folders), not '.' or
'..', not a Windows device name (CON, NUL, COM1, ... with or without an extension), and on Windows none of
<>:"|?*. A part that makes the name longer than a filesystem allows (NAME_MAX bytes, less what the atomic writer's
temporary name adds) keeps its start and ends with '~' and a hash of the whole text, so the short name is stable
and distinct; the set's manifest keeps the full text beside it.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

from ..errors import InputError
from ..files.atomic import name_budget

DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
                         | {f"{port}{n}" for port in ("COM", "LPT") for n in "123456789¹²³"})
WINDOWS_FORBIDDEN = '<>:"|?*'
HASH_CHARS = 12      # 48 bits of sha256: distinct for any set that fits on a disk


def name_problem(text: str) -> Optional[str]:
    """Why `text` cannot be (the start of) one file name, or None."""
    if not text:
        return "it is empty"
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            what = "NUL" if char == "\0" else "a control character"
            return f"it contains {what} (U+{ord(char):04X}), which no file name can hold"
    for sep in ("/", "\\"):
        if sep in text:
            return f"it contains {sep!r}: it names one file, never folders"
    if text in (".", ".."):
        return f"{text!r} names a folder, not a file"
    if text.split(".")[0].rstrip(" ").upper() in DEVICE_NAMES:
        return "it is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    if os.name == "nt" and any(char in WINDOWS_FORBIDDEN for char in text):
        return f"Windows file names cannot contain any of {WINDOWS_FORBIDDEN}"
    return None


def check_name(text: str, what: str) -> None:
    """InputError naming `what` (e.g. "item 3: id"), the text and the rule, when `text` cannot be a file name."""
    problem = name_problem(text)
    if problem is not None:
        raise InputError(f"{what} {text!r} cannot name a file: {problem}")


def _cut(text: str, limit: int) -> str:
    """The longest start of `text` that is at most `limit` UTF-8 bytes (never half a character)."""
    return text.encode("utf-8")[:max(limit, 0)].decode("utf-8", errors="ignore")


def fit_stem(stem: str, longest_tail: str, suffix: str) -> tuple[str, bool]:
    """The stem to use for names `stem + tail` (every tail at most as long as `longest_tail`, such as "-4.mp4" or
    ".png", ending in the file's `suffix`): `stem` itself when the longest name fits NAME_MAX with the writer's
    temporary name, else its start + '~' + a hash of the whole stem. Returns the stem and whether it was cut."""
    budget = name_budget(suffix) - len(longest_tail.encode("utf-8"))
    if len(stem.encode("utf-8")) <= budget:
        return stem, False
    digest = hashlib.sha256(stem.encode("utf-8")).hexdigest()[:HASH_CHARS]
    return f"{_cut(stem, budget - HASH_CHARS - 1).rstrip(' .')}~{digest}", True


def output_stem(stem: str, longest_tail: str, suffix: str, what: str) -> tuple[str, bool]:
    """fit_stem of an id or prompt that names outputs, after check_name (InputError naming `what`)."""
    check_name(stem, what)
    return fit_stem(stem, longest_tail, suffix)
