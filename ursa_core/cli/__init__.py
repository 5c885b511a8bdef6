"""The command line `ursa` (also `python -m ursa_core`): generate, decode, make-tiny, download.

main.py parses and maps errors to exit codes; generate_command.py, batch_command.py and tools.py hold the jobs.
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
