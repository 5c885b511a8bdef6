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
