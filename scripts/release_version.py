#!/usr/bin/env python3
"""The pack's version for the registry publish workflow (stdlib only; never imports torch).

The version is written once: ``__version__`` in ``ursa_core/__init__.py`` when pyproject.toml declares
``dynamic = ["version"]``, else ``[project].version``. The Comfy registry action (comfy-cli) reads a static
``[project].version``, so CI stamps it into its own checkout of pyproject.toml before publishing (never committed).

    python scripts/release_version.py                      # print the version
    python scripts/release_version.py --changed-since REF  # exit 0 if it differs from REF's, 1 if not
    python scripts/release_version.py --stamp              # write it into pyproject.toml [project]
"""
from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT, INIT = "pyproject.toml", "ursa_core/__init__.py"
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


def version_from(pyproject_text: str, init_text: str | None) -> str:
    project = tomllib.loads(pyproject_text)["project"]
    if "version" in project.get("dynamic", []):
        if init_text is None:
            raise ValueError(f"{PYPROJECT} declares a dynamic version but {INIT} is missing")
        for node in ast.parse(init_text).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
                version = ast.literal_eval(node.value)
                break
        else:
            raise ValueError(f"{INIT} has no __version__ = '...'")
    else:
        version = project.get("version", "")
    if not SEMVER.match(str(version)):
        raise ValueError(f"version {version!r} is not X.Y.Z (the registry requires semantic versioning)")
    return version


def _at(ref: str | None, rel: str) -> str | None:
    if ref is None:
        path = ROOT / rel
        return path.read_text(encoding="utf-8") if path.is_file() else None
    res = subprocess.run(["git", "show", f"{ref}:{rel}"], cwd=ROOT, capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def version_at(ref: str | None = None) -> str:
    return version_from(_at(ref, PYPROJECT), _at(ref, INIT))


def stamp(pyproject_text: str, version: str) -> str:
    """pyproject text with a static [project].version (the dynamic declaration removed)."""
    text, n = re.subn(r'(?m)^dynamic\s*=\s*\[\s*"version"\s*\][^\n]*\n', f'version = "{version}"\n', pyproject_text)
    if n == 0 and not re.search(r'(?m)^version\s*=', pyproject_text):
        raise ValueError(f"{PYPROJECT}: neither a version nor dynamic = [\"version\"]")
    return text if n else pyproject_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changed-since", metavar="REF")
    p.add_argument("--stamp", action="store_true")
    args = p.parse_args(argv)
    try:
        version = version_at()
        if args.changed_since:
            try:
                before = version_at(args.changed_since)
            except (ValueError, KeyError, TypeError):
                before = None
            print(f"version {before} -> {version}")
            return 0 if before != version else 1
        if args.stamp:
            path = ROOT / PYPROJECT
            path.write_text(stamp(path.read_text(encoding="utf-8"), version), encoding="utf-8")
            if version_at() != version:
                raise ValueError("stamping did not give the same version")
        print(version)
        return 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
