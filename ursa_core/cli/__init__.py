"""The command line `ursa` (also `python -m ursa_core`): generate, batch, decode, make-tiny, download.

command_line.py parses, checks for torch and maps errors to exit codes; arguments.py holds the flags' types and the
typed objects built from them; generate_command.py, batch_command.py and tools.py hold the jobs. This module imports
nothing until a command runs, so Ctrl-C is answered as `cancelled` (exit 130) from the first moment on: the imports
(about a second: torch) happen inside main().
"""
from __future__ import annotations

import os
import signal
import sys

from .exits import EXIT_INTERRUPTED


def cancelled() -> int:
    # On a line of its own: the interrupt may have cut a line short (a progress bar, a print between its text and
    # its newline), and a terminal echoes ^C where the cursor is.
    print("\ncancelled", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run `ursa` with `argv` (default: the command line) and return its exit code."""
    try:
        from .command_line import run

        return run(argv)
    except KeyboardInterrupt:
        return cancelled()


def console() -> int:
    """The `ursa` console script and `python -m ursa_core`: main() with Ctrl-C taken once (FirstInterrupt), then
    ignored while the process exits with main's answer (in Python's shutdown, thread joins and atexit hooks, a late
    one would be a traceback)."""
    try:
        signal.signal(signal.SIGINT, FirstInterrupt())
        code = main()
    except KeyboardInterrupt:   # raised outside main's own handler (between its last statement and the return)
        code = cancelled()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == EXIT_INTERRUPTED:
        # A KeyboardInterrupt that passed through code run by PyRun_String (pybind11's exec, during torch's import)
        # sets a CPython flag that makes `python -m` end by killing itself with SIGINT (exit -2, not 130) after a
        # clean SystemExit. A cancelled run has cleaned up (every writer's finally ran): end it here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


class FirstInterrupt:
    """SIGINT handler: the first Ctrl-C raises KeyboardInterrupt; later ones, while the first is answered, are
    ignored (also those already pending when it runs: Python may call the handler again before SIG_IGN holds)."""

    def __init__(self):
        self.raised = False

    def __call__(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not self.raised:
            self.raised = True
            raise KeyboardInterrupt


__all__ = ["console", "main"]
