"""Names that may only reach files inside a few allowed folders (ComfyUI's input/ and output/ for token files).

Pure functions over the allowed roots, so the rule is unit-testable without ComfyUI. A name resolves only when its
real path (symlinks followed) lies inside its root; everything else is None, and callers report it without saying
why, so an answer never tells whether some file outside the roots exists.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

# ComfyUI's annotated names: "sub/x.safetensors" (input folder) or "sub/x.safetensors [output]".
DEFAULT_ANNOTATION = "input"


def split_annotation(name: str) -> tuple[str, str]:
    """'a/b.safetensors [output]' -> ('a/b.safetensors', 'output'); no annotation -> the input folder."""
    stripped = name.rstrip()
    if stripped.endswith("]") and " [" in stripped:
        base, _, tag = stripped[:-1].rpartition(" [")
        return base, tag
    return name, DEFAULT_ANNOTATION


def annotated_name(relative: str, tag: str) -> str:
    """How a file `relative` to the root `tag` is listed: 'a/b.safetensors' (input) or 'a/b.safetensors [output]'."""
    return relative if tag == DEFAULT_ANNOTATION else f"{relative} [{tag}]"


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def resolve_contained(name: str, roots: Mapping[str, str | Path], suffix: str) -> Optional[Path]:
    """The real path of an existing `suffix` file that `name` names inside its root, else None.

    roots: annotation -> folder, e.g. {"input": ".../input", "output": ".../output"}.
    """
    base, tag = split_annotation(name)
    if tag not in roots or not base or "\0" in base or os.path.isabs(base):
        return None
    root = os.path.realpath(roots[tag])
    real = os.path.realpath(os.path.join(root, base))
    if not _inside(real, root) or real == root or not real.endswith(suffix) or not os.path.isfile(real):
        return None
    return Path(real)


def list_contained(roots: Mapping[str, str | Path], suffix: str) -> list[str]:
    """Annotated names of the `suffix` files inside each root (the input root's without annotation); files whose
    real path leaves their root (symlink escapes) are not listed."""
    names = []
    for tag, root in roots.items():
        root = Path(root)
        if not root.is_dir():
            continue
        found = [annotated_name(p.relative_to(root).as_posix(), tag) for p in root.rglob(f"*{suffix}")]
        names += sorted(n for n in found if resolve_contained(n, roots, suffix) is not None)
    return names
