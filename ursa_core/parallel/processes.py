"""Whether a process named by (host, pid) still runs: the test of a stale lock and of a vanished rank.

Only a process on this host can be checked; callers treat a process on another host as alive (its own host knows).
"""
from __future__ import annotations

import os
import socket


def this_host() -> str:
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    """True while `pid` runs on this host. A zombie (exited, not yet reaped by its parent) has stopped running."""
    if pid <= 0:
        return False
    if os.name == "nt":   # os.kill(pid, 0) would terminate it there, not probe it: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):   # no /proc (macOS): os.kill answered
        return True
