"""One run per output folder: a lock file in the folder names the run writing there (host, pid, since when), so a
second run refuses in one line instead of rendering the same outputs twice or removing the first run's temporaries.

The lock is created with O_EXCL. A lock whose process is gone is stale: on the same host that is certain (the pid
no longer runs) and the lock is taken over; a lock held from another host cannot be checked from here, so the
message says which machine holds it and which file to delete if that run is gone. Taking over goes through a
second exclusive file, so two runs that find the same stale lock cannot both take it. The ranks of one torchrun
launch are one run: rank 0 holds the lock for all of them.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..parallel.processes import process_alive, this_host

LOCK_NAME = ".ursa-batch.lock"
YOUNG = 5.0        # seconds: an unreadable lock this young is still being written
BREAKER_AGE = 30.0  # seconds: a take-over file this old belongs to a run that died while taking over


def _raw(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _holder(data: bytes) -> Optional[dict]:
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) and {"host", "pid", "token"} <= set(holder) else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _create(path: Path, content: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _take_over(path: Path, judged: bytes) -> None:
    """Remove the stale lock `path` if it still holds `judged`, under an exclusive take-over file."""
    breaker = path.with_name(path.name + ".takeover")
    if not _create(breaker, str(os.getpid()).encode()):
        if _age(breaker) > BREAKER_AGE:
            breaker.unlink(missing_ok=True)
        time.sleep(0.05)
        return
    try:
        if _raw(path) == judged:
            path.unlink(missing_ok=True)
    finally:
        breaker.unlink(missing_ok=True)


class RunLock:
    """The lock this run holds on `folder`; release() removes it (only if it is still ours)."""

    def __init__(self, path: Path, token: str, took_over: Optional[dict]):
        self.path, self.token, self.took_over = path, token, took_over

    def release(self) -> None:
        data = _raw(self.path)
        holder = _holder(data) if data is not None else None
        if holder is not None and holder["token"] == self.token:
            self.path.unlink(missing_ok=True)


def _refusal(folder: Path, path: Path, holder: dict) -> InputError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return InputError(f"--outdir {folder}: another run is writing there (pid {holder['pid']} on "
                      f"{holder['host']}, since {since}); wait for it to finish, or if that run is gone, delete "
                      f"{path}")


def acquire(folder: Path, ranks: int = 1) -> RunLock:
    """Lock `folder` for this run (InputError naming the holder if another live run has it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path, token = folder / LOCK_NAME, secrets.token_hex(8)
    content = json.dumps({"host": this_host(), "pid": os.getpid(), "token": token, "started": time.time(),
                          "ranks": ranks}).encode("utf-8")
    took_over = None
    for _ in range(200):
        if _create(path, content):
            return RunLock(path, token, took_over)
        data = _raw(path)
        if data is None:
            continue
        holder = _holder(data)
        if holder is None and _age(path) < YOUNG:
            time.sleep(0.05)
            continue
        if holder is not None and (holder["host"] != this_host() or process_alive(int(holder["pid"]))):
            raise _refusal(folder, path, holder)
        took_over = holder or {"host": "?", "pid": "?"}
        _take_over(path, data)
    raise InputError(f"--outdir {folder}: could not lock it ({path} keeps changing); is another run starting?")
