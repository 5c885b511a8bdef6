"""Atomic output: every file or folder is written under a temporary name in its target's folder, checked, then
renamed into place. A failure or Ctrl-C at any moment leaves an existing target intact and no temporary behind.

The one home of this rule: media (PNG/MP4), token files, the tiny checkpoint and downloads all go through here.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from ..errors import InputError, OutputError

TEMP_MARK = ".partial"
NAME_MAX = 255   # bytes per file name on ext4, XFS, btrfs, APFS and ZFS (NTFS: 255 UTF-16 units, never more bytes)


def check_writable(target: str | Path, what: str = "--out") -> Path:
    """Before any work: `target` is not a folder and its folder exists (created if missing) and accepts new files.

    Raises InputError naming the path and the reason (the caller's bad input: exit 2 on the CLI).
    """
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{what} {target}: is a folder; give a file name (e.g. {target / 'out.png'})")
    in_the_way = next((parent for parent in target.parents if parent.exists()), None)  # the nearest existing one
    if in_the_way is not None and not in_the_way.is_dir():
        raise InputError(f"{what} {target}: {in_the_way} is a file, not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.unlink(_temp_name(target))
    except OSError as exc:
        raise InputError(f"{what} {target}: cannot write there ({exc.strerror or exc})") from None
    return target


def _temporary_name(name: str, suffix: str, token: str) -> str:
    """The hidden name a file is written under before it is renamed to `name` (the one home of its shape)."""
    return f".{name}.{token}{TEMP_MARK}{suffix}"


def name_budget(suffix: str) -> int:
    """The longest file name (UTF-8 bytes) with `suffix` whose temporary name still fits in NAME_MAX."""
    return NAME_MAX - len(_temporary_name("", suffix, secrets.token_hex(4)).encode("utf-8"))


def _fresh_beside(target: Path, make) -> Path:
    """Create a new hidden name beside `target` that keeps its extension (writers pick the format from it).

    Created with the usual modes (0666/0777 less the umask), unlike tempfile's private 0600/0700, because the
    temporary becomes the output.
    """
    for _ in range(100):
        candidate = target.with_name(_temporary_name(target.name, target.suffix, secrets.token_hex(4)))
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _temp_name(target: Path) -> Path:
    return _fresh_beside(target, _new_file)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C for the few renames that publish a set of files, so the set appears whole (the interrupt is
    delivered right after). A Python-level handler, not a signal mask: a process-directed SIGINT may land on any
    thread (torch starts several), and Python runs its handlers in the main thread whichever thread received it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and previous is not signal.SIG_IGN:
            if callable(previous):
                previous(signal.SIGINT, None)   # Python's default handler raises KeyboardInterrupt here
            else:
                raise KeyboardInterrupt


def _check_written(tmp: Path, target: Path) -> None:
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise OutputError(f"{target}: the writer produced no data")


@contextmanager
def atomic_files(targets: Sequence[str | Path],
                 before_rename: Optional[Callable[[], None]] = None) -> Iterator[list[Path]]:
    """Yield one temporary path per target; when the block succeeds, each is checked (non-empty), synced and
    renamed onto its target. On any exception (KeyboardInterrupt included) every temporary is removed.

    `before_rename()` runs once the files are complete and synced, just before they appear (a batch logs the
    output there, so no output ever exists without its record); if it raises, nothing is renamed.
    """
    targets = [Path(t) for t in targets]
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_temp_name(target))
        yield list(temps)
        for tmp, target in zip(temps, targets):
            _check_written(tmp, target)
            _fsync(tmp)
        if before_rename is not None:
            before_rename()
        with _sigint_deferred():
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
    except OSError as exc:
        shown = f"{targets[0]}" + (f" (and {len(targets) - 1} more)" if len(targets) > 1 else "")
        raise OutputError(f"{shown}: cannot write ({exc.strerror or exc})") from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: str | Path, before_rename: Optional[Callable[[], None]] = None) -> Iterator[Path]:
    """`with atomic_file("out.mp4") as tmp: write(tmp)`: the target changes only if the block succeeds."""
    with atomic_files([target], before_rename) as temps:
        yield temps[0]


def partial_dir(target: str | Path) -> Path:
    """The stable work folder beside `target` (a stable name, so an interrupted download can resume there)."""
    target = Path(target)
    return target.with_name(f".{target.name}{TEMP_MARK}")


def replace_dir(source: Path, target: Path) -> Path:
    """Move a finished folder onto `target`; an existing target is swapped out and removed only afterwards."""
    source, target = Path(source), Path(target)
    old = None
    try:
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(source, target)
    except BaseException as exc:
        if old is not None and (old / target.name).exists():  # put the old folder back
            os.replace(old / target.name, target)
        if isinstance(exc, OSError):
            raise OutputError(f"{target}: cannot move the finished folder into place ({exc.strerror or exc})") \
                from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """`with atomic_dir("models/x") as tmp: fill(tmp)`: the folder appears complete or not at all."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_beside(target, lambda path: path.mkdir(0o777))
    try:
        yield tmp
        replace_dir(tmp, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
