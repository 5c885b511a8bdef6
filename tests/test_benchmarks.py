"""The benchmark scripts' CPU paths (their GPU runs are the lead's: docs/PERFORMANCE.md names the commands)."""
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_dtype_benchmark_reports_speed_and_per_layer_error(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import bench_dtype

    out = tmp_path / "dtype.json"
    assert bench_dtype.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    speed = report["speed"]["1x32x32"]
    assert speed["fp16"]["guided_step_s"] > 0 and speed["bf16"]["guided_step_s"] > 0
    assert speed["fp16_over_bf16"] == speed["fp16"]["guided_step_s"] / speed["bf16"]["guided_step_s"]
    tiny = report["layer_error"]["tiny_5x64x64"]
    for dtype in ("fp16", "bf16"):
        assert len(tiny[dtype]["layer_rel_rms"]) == 2 and tiny[dtype]["nonfinite"] == 0   # the tiny stack's layers
        assert 0 < tiny[dtype]["layer_rel_rms_max"] < 0.05 and 0 < tiny[dtype]["head_rel_rms"] < 0.05
    # 10 mantissa bits against 7: fp16 rounds about 8x finer than bf16, layer by layer
    assert tiny["fp16"]["layer_rel_rms_max"] < tiny["bf16"]["layer_rel_rms_max"] / 3


def test_speed_benchmark_runs_both_calls_sections_within_budget(tmp_path, capsys):
    """bench_speed --quick: both GPU calls' sections on the tiny model on the CPU (compile, CUDA graphs, FA4 and
    sage2 are the GPU's), the previous-code worker (a subprocess importing the code under --prev: here this tree),
    per-step medians and their 50-step extrapolation, a section that does not fit the budget skipped and said so,
    the report on disk."""
    sys.path.insert(0, str(BENCHMARKS))
    import bench_speed

    marker = tmp_path / "sage2.done"
    marker.write_text("0\n")
    assert bench_speed.main(["--quick", "--out-dir", str(tmp_path), "--prev", str(BENCHMARKS.parent), "--measured",
                             "0", "--budget-s", "900", "--wait-for", str(marker)]) == 0
    report = json.loads((tmp_path / "bench_speed_quick.json").read_text())
    sections = report["sections"]
    assert not [name for name, section in sections.items() if "error" in section and "gap_profile" not in name]
    variants = sections["variants"]
    assert variants["compiled+graphs"]["tokens_identical"] and variants["compiled_again"]["tokens_identical"]
    assert set(variants["kept"]) >= {"graphs", "fused", "projections"}
    prev = sections["prev"]
    assert set(prev["runs"]) == {"guided", "one_branch"} and prev["options"]["compile"] is False
    extrapolated, runs = prev["t2v50_extrapolated"], prev["runs"]
    assert (extrapolated["guided"], extrapolated["unguided"], extrapolated["skipped"]) == (44, 5, 1)
    assert abs(extrapolated["total_s"] - (runs["guided"]["overhead_s"] + 44 * runs["guided"]["median_step_s"]
                                          + 5 * runs["one_branch"]["median_step_s"])) < 1e-2
    swap = sections["block_swap"]
    assert swap["resident_2"]["x_all_resident"] > 0
    assert swap["resident_2"]["tokens_sha1"] == swap["all_resident"]["tokens_sha1"]  # streaming never moves a token
    assert sections["headline_prev"]["runs"]["t2v_5"]["steps"] == 5 and sections["headline_new"]["steps"] == 5
    # call c: the exact path beside sage2 with eager steps (sage2 is not built here: skipped, and said)
    assert sections["c_exact"]["steps"] == 5 and "skipped" in sections["c_sage2"]
    errors = sections["sage2_layer_error"]["math"]
    assert len(errors["after_attention_residual"]["per_layer"]) == 2 and errors["logits_rel_rms"] < 0.05
    assert report["sage2_build"] == "0" and "skipped" in sections["sage2"]
    assert sections["t2i_new"]["best"]["steps"] == 4 and "ms" in sections["attention_kernels"]["sdpa"]
    assert sections["too_big"]["skipped"].startswith("budget")
    import speed_table  # the tables docs/PERFORMANCE.md takes from such reports

    assert speed_table.main([str(tmp_path / "bench_speed_quick.json")]) == 0
    table = capsys.readouterr().out
    assert "| compiled+graphs |" in table and "| T2I 1024², 25 steps |" in table and "| resident_2 |" in table


def test_kernel_timeline_splits_busy_and_idle_time(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    sys.path.insert(0, str(BENCHMARKS.parent))
    from speed_measure import kernel_timeline, steady_median

    kernels = [("sm90_xmma_gemm_bf16", 0, 100), ("flash_fwd_kernel", 100, 400), ("triton_poi_fused_add_0", 700, 50),
               ("_jump_kernel", 750, 50)]
    events = [{"cat": "kernel", "name": n, "ts": ts, "dur": d} for n, ts, d in kernels]
    events.append({"cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 900, "dur": 100})
    events.append({"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5000})  # host events are not GPU time
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    timeline = kernel_timeline(trace)
    assert timeline["span_ms"] == 1.0 and timeline["busy_ms"] == 0.7 and timeline["idle_ms"] == 0.3
    assert timeline["idle_over_100us_ms"] == 0.2 and timeline["largest_gaps"][0]["before"] == "triton_poi_fused_add_0"
    assert timeline["by_category_ms"] == {"attention": 0.4, "gemm": 0.1, "memcpy/memset": 0.1, "inductor": 0.05,
                                          "sampler": 0.05}
    # steady steps: after step 0 and the two warm-up steps, without the final step
    assert steady_median([9.0, 5.0, 4.0, 1.0, 3.0, 2.0, 8.0]) == 2.0


def test_fused_layer_error_compares_each_fused_layer_with_the_eager_one():
    """The benchmark's per-layer check of the fused kernels, on the tiny model through Triton's interpreter."""
    import os

    import pytest
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs Triton's interpreter (set by conftest where there is no GPU)")
    sys.path.insert(0, str(BENCHMARKS))
    import speed_sections
    from speed_measure import CASES, make_model

    result = speed_sections.fused_layer_error(make_model("tiny", "cpu"), CASES["tiny"], "sdpa")
    layers = result["layer_rel_rms"]
    assert len(layers["per_layer"]) == 2 and 0 < layers["max"] < 0.05 and 0 < result["logits_rel_rms"] < 0.05
