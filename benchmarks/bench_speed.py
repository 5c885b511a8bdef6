"""Issue 22's speed measurements, sized for two calls of at most 9 minutes on one H100 (docs/PERFORMANCE.md).

    python3 benchmarks/bench_speed.py --call a --out-dir OUT --budget-s 400 [--prev DIR]   # no FA4 installed
    python3 benchmarks/bench_speed.py --call b --out-dir OUT --budget-s 420 [--prev DIR]   # FA4 + sage2 installed
    python3 benchmarks/bench_speed.py --quick --out-dir OUT [--prev .]                     # CPU smoke test, tiny model

Call a: every change alone against the previous state on the 49-frame clip (full-size random 1.7B weights): CUDA
graphs, fused QK-norm + RoPE, all fused kernels, the eager path with and without them, fused projections (GEMM
shapes); the fused kernels' per-layer error against the eager layers; the best combination; the project's previous
path; the GPU timeline of a step; block swap at 2, 8, 16 resident layers against all resident; the 0.6B shape.
Call b: the attention kernels (FA4, SDPA, SageAttention 2); the changes again on FA4; the headline 50-step totals of
the previous and the new path; sage2's per-layer and logits error and its 50-step total; T2I 1024^2, 25 steps.
Call c (sage2 built, FA4 not needed): sage2's 50-step total again, its steps eager, beside the exact path's
(BENCH_SAGE2_ONLY=1: sage2 alone, when the exact run was already measured on the same warm machine).

--prev DIR holds a copy of the previous commit's `ursa_core/` (benchmarks/speed_calls.sh stage makes it): its runs go
through a subprocess that imports that code, so "previous" is the project's previous path itself, measured in the
same lease. Every section rewrites OUT/bench_speed_<call>.json when it ends (a run killed at its limit keeps what
it measured) and prints timestamped progress lines; a section that would not fit in what is left of --budget-s is
skipped and says so.

Per-step times come from a guided (or one-branch) run of 4 + m steps: the no-op step 0, steps 1-2 warm up (with CUDA
graphs: eager, then captured), the final step (no jump) is left out, the median is over the m steps between. A 50-step
total is extrapolated as overhead + 44 guided + 5 one-branch steps (the counts are read from the time grid at trunc
0.9); the headline totals are run for real.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
MEASURED = 3  # steady steps per per-step measurement


def worker_main(args) -> int:
    from speed_measure import run_spec
    result = run_spec(json.loads(args.worker), progress=lambda text: print(f"[prev] {text}", flush=True))
    tmp = Path(args.result).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, args.result)
    return 0


def setup_path(code_root: str | None) -> None:
    """The code under test first on sys.path (this tree, or the previous commit's copy), the benchmark helpers next."""
    sys.path.insert(0, str(BENCHMARKS))
    sys.path.insert(0, str(Path(code_root).resolve() if code_root else REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--call", choices=("a", "b", "c", "quick"), default="a")
    parser.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke test of this script)")
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--budget-s", type=float, default=400.0, help="seconds the sections may take together")
    parser.add_argument("--prev", help="folder holding the previous commit's ursa_core/ (its runs: a subprocess)")
    parser.add_argument("--wait-for", help="call b: a file the sage2 build writes when done (waited for before sage2)")
    parser.add_argument("--measured", type=int, default=MEASURED, help="steady steps per per-step measurement")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_path(args.code_root)
    if args.worker:
        return worker_main(args)
    if args.quick:
        args.call = "quick"
    import speed_sections
    device = torch.device("cuda" if torch.cuda.is_available() and args.call != "quick" else "cpu")
    run = speed_sections.Run(args, device)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    from speed_measure import ClockMonitor
    run.monitor = ClockMonitor() if device.type == "cuda" else None
    run.log(f"bench_speed call {args.call} on {run.report['device']}, budget {args.budget_s:.0f} s")
    try:
        {"a": speed_sections.call_a, "b": speed_sections.call_b, "c": speed_sections.call_c, "quick": speed_sections.call_quick}[args.call](run)
    finally:
        if run.monitor:
            run.monitor.close()
        run.report["wall_s"] = round(time.perf_counter() - run.start, 1)
        run.save()
        run.log(f"wrote {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
