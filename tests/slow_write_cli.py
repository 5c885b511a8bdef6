"""`python -m ursa_core ARGS` with a pause between a complete temporary output file and its rename into place, so
tests/test_outputs.py can deliver a real Ctrl-C while a write is observably in progress (the pause lives here, not
in the product)."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ursa_core.files.atomic as atomic  # noqa: E402
from ursa_core.cli import main  # noqa: E402

PAUSE_S = 60.0


def pause_before_publishing() -> None:
    publish = atomic._sigint_deferred  # entered right after the temporaries are written and synced

    def paused():
        time.sleep(PAUSE_S)
        return publish()
    atomic._sigint_deferred = paused


if __name__ == "__main__":
    pause_before_publishing()
    sys.exit(main(sys.argv[1:]))
