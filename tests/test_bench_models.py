"""benchmarks/bench_models.py's CPU path: both sizes, every tokenizer, guided and CFG-free, one JSON report."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_reports_both_sizes_guided_and_cfg_free(tmp_path):
    out = tmp_path / "models.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["steps"] == 3
    assert set(report["results"]) == {"0.6B/t2v5_32", "0.6B/t2i_32", "1.7B/t2v5_32", "1.7B/t2i_32"}
    for name, entry in report["results"].items():
        guided, free = entry["guided"], entry["cfg_free"]
        # guided steps run two branches, CFG-free ones one, and the memory check expects less for one branch
        assert guided["branches"] == [2] and free["branches"] == [1], name
        assert free["estimate_above_weights_bytes"] < guided["estimate_above_weights_bytes"], name
        assert guided["median_step_s"] > 0 and free["median_step_s"] > 0 and entry["weights_gib"] > 0
    small, large = report["results"]["0.6B/t2i_32"], report["results"]["1.7B/t2i_32"]
    assert small["weights_gib"] < large["weights_gib"]
