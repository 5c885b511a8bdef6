"""The multi-GPU table of docs/PERFORMANCE.md from bench_parallel.py reports (one per GPU count).

    python benchmarks/parallel_table.py bench_1gpu.json bench_2gpu.json bench_4gpu.json

Every time is compared with the 1-GPU clip of the report with world 1 (or, failing that, each report's own
`single` run, which rank 0 ran alone on the same machine), and every row names its target from issue 13.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CLIP_TARGET = {2: 0.55, 4: 0.33}     # one clip on N GPUs <= target x the 1-GPU time
THROUGHPUT_TARGET = 0.95             # batch throughput on N GPUs >= target x N x one GPU


def _baseline(reports: list[dict]) -> tuple[float, float]:
    """(seconds per 1-GPU clip, 1-GPU clips per hour)."""
    ones = [r for r in reports if r["world"] == 1] or reports
    single = ones[0]["modes"].get("single", {})
    return single.get("total_s", float("nan")), ones[0]["batch"]["clips_per_hour"] if ones[0]["world"] == 1 \
        else float("nan")


def table(reports: list[dict]) -> str:
    clip_s, per_hour = _baseline(reports)
    first = reports[0]
    lines = [f"Device: {first['device']}; attention {first.get('attention')}; clip {first['clip']}; "
             f"date {first['date']}; NCCL_NVLS_ENABLE={first.get('nccl_nvls_enable')}",
             "",
             "| GPUs | mode | s / clip | x 1 GPU | target | median step s | comm s / step | peak GiB / rank "
             "| tokens = 1 GPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for report in sorted(reports, key=lambda r: r["world"]):
        for mode, r in report["modes"].items():
            if "total_s" not in r or (mode == "single" and report["world"] > 1):
                continue
            gpus = r.get("ranks", 1)
            target = f"<= {CLIP_TARGET[gpus]}" if gpus in CLIP_TARGET else ""
            equal = r.get("tokens_equal_to_single")
            lines.append(f"| {gpus} | {mode} | {r['total_s']:.1f} | {r['total_s'] / clip_s:.2f} | {target} | "
                         f"{r['median_step_s']:.3f} | {r['comm_s_per_step']:.4f} | "
                         f"{max(r['peak_gib_per_rank']):.1f} | {'' if equal is None else f'{equal:.4f}'} |")
    lines += ["", "| GPUs | clips | steps | clips / hour | x N x 1 GPU (target >= 0.95) |", "|---|---|---|---|---|"]
    for report in sorted(reports, key=lambda r: r["world"]):
        b = report["batch"]
        lines.append(f"| {b['ranks']} | {b['clips']} | {b['steps']} | {b['clips_per_hour']:.0f} | "
                     f"{b['clips_per_hour'] / (b['ranks'] * per_hour):.2f} |")
    commands = sorted({r["command"] for r in reports})
    lines += ["", "Commands (under `torchrun --nproc-per-node N` for N > 1): " + "; ".join(f"`{c}`" for c in commands)]
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    print(table([json.loads(Path(p).read_text()) for p in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
