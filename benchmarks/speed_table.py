"""Markdown tables for docs/PERFORMANCE.md from bench_speed's reports (call a and/or call b).

    python3 benchmarks/speed_table.py bench_speed_a.json bench_speed_b.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def seconds(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def step(section: dict, key: str):
    entry = section.get(key) or {}
    return entry.get("median_step_s")


def variants_table(report: dict) -> list[str]:
    """Each change alone against the compiled path: median guided step, ratio, tokens identical where it applies."""
    section = report["sections"].get("variants") or {}
    if "compiled" not in section:
        return [f"variants: {section.get('skipped') or section.get('error') or 'not run'}"]
    base = section.get("kept", {}).get("base_step_s") or step(section, "compiled")
    frames, height, width = section["case"]
    rows = [f"Each change alone, {report['device']}, {report['date']}, attention `{section['attention']}`, "
            f"{frames}x{height}x{width} guided step (median of {section['measured_steps']} steady steps); base = mean "
            f"of the two compiled runs ({seconds(base)} s)", "",
            "| variant | guided step s | x base | peak GiB | tokens identical |", "|---|---|---|---|---|"]
    for key, entry in section.items():
        if isinstance(entry, dict) and "median_step_s" in entry:
            same = entry.get("tokens_identical")
            rows.append(f"| {key} | {seconds(entry['median_step_s'])} | {entry['median_step_s'] / base:.3f} | "
                        f"{entry.get('peak_alloc_gib', '—')} | {'' if same is None else same} |")
    rows += ["", f"kept: `{json.dumps(section.get('kept'))}`"]
    return rows


def totals_table(a: dict | None, b: dict | None) -> list[str]:
    rows = ["| case | previous path | new path | ratio | peak GiB prev → new | how |", "|---|---|---|---|---|---|"]
    for report, prev_key, new_key, label in ((b, "headline_prev", "headline_new", "T2V 49x320x512, 50 steps"),
                                             (b, "t2i_prev", "t2i_new", "T2I 1024², 25 steps")):
        if not report:
            continue
        prev, new = report["sections"].get(prev_key, {}), report["sections"].get(new_key, {})
        prev_run = next(iter(prev.get("runs", {}).values()), {})
        new_run = new.get("best", new)
        if "total_s" in prev_run and "total_s" in new_run:
            rows.append(f"| {label} | {seconds(prev_run['total_s'], 2)} | {seconds(new_run['total_s'], 2)} | "
                        f"{prev_run['total_s'] / new_run['total_s']:.3f} | {prev_run.get('peak_alloc_gib')} → "
                        f"{new_run.get('peak_alloc_gib')} | run for real, {report['device']} |")
    if b and "total_s" in b["sections"].get("sage2", {}):
        sage2 = b["sections"]["sage2"]
        rows.append(f"| same, sage2 (8-bit attention) | | {seconds(sage2['total_s'], 2)} | | "
                    f"{sage2.get('peak_alloc_gib')} | run for real |")
    for report in (a, b) if a is not b else (a,):
        for prev_key, new_key, label in (("prev", "best", "T2V 49 frames, 1.7B"), ("prev_0.6b", "best_0.6b",
                                                                                  "T2V 49 frames, 0.6B shape")):
            prev = (report or {}).get("sections", {}).get(prev_key, {}).get("t2v50_extrapolated")
            new = (report or {}).get("sections", {}).get(new_key, {}).get("t2v50_extrapolated")
            if prev and new:
                rows.append(f"| {label} ({report['attention'] if 'attention' in report else 'default kernel'}) | "
                            f"{seconds(prev['total_s'], 2)} | {seconds(new['total_s'], 2)} | "
                            f"{prev['total_s'] / new['total_s']:.3f} | | extrapolated, call {report['call']} |")
    return rows


def block_swap_table(report: dict, key: str) -> list[str]:
    section = report["sections"].get(key) or {}
    rows = [f"| {key} | guided step s | x all resident |", "|---|---|---|"]
    for name, entry in section.items():
        if isinstance(entry, dict) and "median_step_s" in entry:
            rows.append(f"| {name} | {seconds(entry['median_step_s'])} | {entry.get('x_all_resident', 1.0)} |")
    return rows


def errors_table(report: dict) -> list[str]:
    rows = ["| path | per-layer rel. RMS mean / max | one-forward logits rel. RMS |", "|---|---|---|"]
    fused = report["sections"].get("fused_layer_error", {})
    if "layer_rel_rms" in fused:
        layer = fused["layer_rel_rms"]
        rows.append(f"| fused kernels vs eager (layer output) | {layer['mean']} / {layer['max']} | "
                    f"{fused['logits_rel_rms']} |")
    for name, entry in report["sections"].get("sage2_layer_error", {}).items():
        if isinstance(entry, dict) and "after_attention_residual" in entry:
            after = entry["after_attention_residual"]
            rows.append(f"| {name} vs SDPA (after o_proj + residual) | {after['mean']} / {after['max']} | "
                        f"{entry['logits_rel_rms']} |")
    return rows


def main(paths: list[str]) -> int:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    # the CPU smoke test's report ("quick") holds both calls' sections
    a = next((r for r in reports if r.get("call") in ("a", "quick")), None)
    b = next((r for r in reports if r.get("call") in ("b", "quick")), None)
    lines: list[str] = []
    for report in (a, b) if a is not b else (a,):
        if report:
            lines += [f"### call {report['call']}", ""] + variants_table(report) + [""]
            lines += errors_table(report) + [""]
            for key in ("block_swap", "block_swap_0.6b"):
                if key in report["sections"]:
                    lines += block_swap_table(report, key) + [""]
    lines += ["### totals", ""] + totals_table(a, b)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
