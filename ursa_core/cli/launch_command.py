"""`ursa launch`: torchrun for `ursa batch` and `ursa generate`, ending in one line and an exit code.

`ursa launch [torchrun options] batch|generate [options]` runs torchrun's own launcher (torch.distributed.run, in
this process) with `-m ursa_core <command> ...` as each rank's program: the same rendezvous, one machine or several.
The ranks report a failure themselves, one line for the launch (ursa_core.parallel.ranks), and stop within seconds; what
torchrun adds on top (its failure table, its traceback on Ctrl-C) is left out here: the launcher says something
only when a rank died without a word (killed by a signal) or, on several machines, when the rendezvous it shares
with the others is gone (the machine serving it ended: its ranks have stopped too), and exits with the ranks' code
(130 for Ctrl-C).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ..errors import InputError
from .exits import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_TERMINATED

COMMANDS = ("batch", "generate")
EXIT_FAILED = EXIT_OUTPUT   # 1: also what `ursa` says when a rank of a launch failed (command_line.EXIT_CODES)
# what a rank of ours exits with after reporting its one line
OUR_CODES = (EXIT_OUTPUT, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED)


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    for index, word in enumerate(argv):
        if word in COMMANDS:
            return argv[:index], argv[index:]
    raise InputError("ursa launch: give torchrun's options, then batch or generate and its options (e.g. "
                     "ursa launch --nproc-per-node 2 batch --model M --prompts P --outdir D)")


def _torchrun_args(options: list[str], command: list[str]) -> argparse.Namespace:
    from torch.distributed import run as torchrun

    parser = torchrun.get_args_parser()
    parser.error = lambda message: parser.exit(2, f"error: ursa launch: {message}\n")   # one line, as ours
    return parser.parse_args([*options, "--module", "ursa_core", *command])


def run_launch(argv: list[str], ursa_parser: argparse.ArgumentParser) -> int:
    options, command = _split(argv)
    try:
        ursa_parser.parse_args(command)   # a bad option of the command: one line and exit 2 before a rank starts
        args = _torchrun_args(options, command)
    except SystemExit as exc:
        return int(exc.code or 0)
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    logging.disable(logging.CRITICAL)   # torchrun's own reports: the ranks have said it in one line
    # torch's C++ store client prints a warning with its C++ stack when a store call fails (the ranks report that in
    # one line); it reads this variable once, when a rank imports torch, so it is set for the ranks here
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        torchrun.run(args)
        return 0
    except SignalException as exc:
        return EXIT_INTERRUPTED if exc.sigval == signal.SIGINT else 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode in OUR_CODES:
            return failure.exitcode
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with {failure.exitcode}"
        print(f"error: rank {rank} {how} without a word; every rank stopped", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except RendezvousError:   # several machines: the one serving the rendezvous ended, or none answers
        # (torch's own message only points at an inner exception: the endpoint is what a user can check)
        print(f"error: the rendezvous at {args.rdzv_endpoint or 'this machine'} is gone or cannot be reached (the "
              f"machine serving it ended or is unreachable); this machine's ranks stopped", file=sys.stderr,
              flush=True)
        return EXIT_FAILED
    finally:
        logging.disable(logging.NOTSET)
