"""`ursa batch` end to end on the tiny checkpoint: names, manifest, resume (stale temporaries removed), DPG-Bench
grids and GenEval side files, item errors before any weight loads, and 2 gloo ranks sharing the set."""
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from test_parallel import launch
from ursa_core.files.media import count_video_frames

FAST = ["--height", "32", "--width", "32", "--steps", "2"]
ROOT = Path(__file__).resolve().parents[1]   # run this checkout's ursa_core, not an installed one


def ursa(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ursa_core", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_jsonl_set_names_manifest_and_resume(tiny_dir, tmp_path):
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "first.png")     # relative to the prompt file
    items = [{"prompt": "a fox", "id": "fox", "seed": 40},
             {"prompt": "a dog", "frames": 5, "cfg": 3.0, "image": "first.png"}]
    prompts = tmp_path / "set.jsonl"
    prompts.write_text("\n".join(map(json.dumps, items)))
    out = tmp_path / "out"
    done = ursa("batch", "--model", tiny_dir, "--prompts", prompts, "--outdir", out, "--samples", "2", *FAST)
    assert done.returncode == 0, done.stderr
    names = ["fox-0.png", "fox-1.png", "00001-a_dog-0.mp4", "00001-a_dog-1.mp4"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["manifest.jsonl"])
    assert Image.open(out / "fox-0.png").size == (32, 32) and count_video_frames(out / "00001-a_dog-1.mp4") == 5
    lines = {line["out"]: line for line in manifest(out)}
    assert [lines[n]["samples"][0]["seed"] for n in names[:2]] == [40, 41]
    dog = lines["00001-a_dog-0.mp4"]["settings"][0]
    assert (dog["frames"], dog["cfg"], dog["steps"], dog["motion"]) == (5, 3.0, 2, 9.0)
    assert dog["image"] == str(tmp_path / "first.png") and lines["fox-0.png"]["settings"][0]["image"] is None
    progress = [line.split(",")[0] for line in done.stdout.splitlines() if line.startswith("[batch]")]
    assert progress == ["[batch] 1/4 done", "[batch] 2/4 done", "[batch] 3/4 done", "[batch] 4/4 done"]

    # a killed run: one output never renamed into place, its temporary left behind
    (out / "fox-1.png").unlink()
    stale = out / ".fox-1.png.0badc0de.partial.png"
    stale.write_bytes(b"half a file")
    again = ursa("batch", "--model", tiny_dir, "--prompts", prompts, "--outdir", out, "--samples", "2", *FAST)
    assert again.returncode == 0, again.stderr
    assert "removed 1 unfinished temporary" in again.stdout and not stale.exists()
    assert "wrote 1, skipped 3 finished" in again.stdout
    # the set's rate counts rendered clips only: a skipped output is not a clip made in no time
    rates = [line for line in again.stdout.splitlines() if line.startswith("[batch]")]
    assert rates[0].endswith("(already there)") and all("clips/hour" in line for line in rates[1:])
    assert Counter(line["out"] for line in manifest(out)) == Counter(names + ["fox-1.png"])


def test_dpgbench_grid_and_geneval_side_files(tiny_dir, tmp_path):
    (tmp_path / "dpg").mkdir()
    (tmp_path / "dpg" / "prompts.json").write_text(json.dumps([{"id": "p7", "prompt": "two cats"}]))
    done = ursa("batch", "--model", tiny_dir, "--prompts", tmp_path / "dpg" / "prompts.json", "--format",
                "dpgbench", "--samples", "4", "--outdir", tmp_path / "dpg_out", *FAST)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "dpg_out" / "p7.png").size == (64, 64)   # 2x2 grid of 32x32 samples
    (tmp_path / "ge").mkdir()
    (tmp_path / "ge" / "prompts.json").write_text(json.dumps([{"id": 0, "prompt": "a bench"}]))
    (tmp_path / "ge" / "metadata.jsonl").write_text('{"tag": "single_object"}\n')
    done = ursa("batch", "--model", tiny_dir, "--prompts", tmp_path / "ge" / "prompts.json", "--outdir",
                tmp_path / "ge_out", *FAST)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ge_out" / "00000" / "samples" / "00000.png").is_file()
    assert (tmp_path / "ge_out" / "00000" / "metadata.jsonl").read_text() == '{"tag": "single_object"}\n'


def test_bad_item_is_one_line_before_any_weight_loads(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir, tmp_path / "no-weights")
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()                      # loading would fail: the item's rule must come first
    prompts = tmp_path / "set.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "a fox", "frames": 3}\n')
    done = ursa("batch", "--model", folder, "--prompts", prompts, "--outdir", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: item 00001-a_fox#0: frames=3 is not allowed: use 1 (an image) or "
                                   "1 + 4k frames (5, 9, ..., 241)")
    assert not (tmp_path / "out").exists()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "a fox", "frames": 5, "image": "broken.png"}\n')
    done = ursa("batch", "--model", folder, "--prompts", prompts, "--outdir", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: item 00001-a_fox#0: ") and "broken.png" in done.stderr


def test_two_gloo_ranks_share_the_set(tiny_dir, tmp_path):
    prompts = tmp_path / "set.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(5)))
    out = tmp_path / "out"
    results = launch(["-m", "ursa_core", "batch", "--model", tiny_dir, "--prompts", prompts, "--outdir", out,
                      *FAST], 2, cwd=ROOT)
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-1500:] for r in results]
    lines = manifest(out)
    assert sorted(line["out"] for line in lines) == sorted(p.name for p in out.glob("*.png"))
    # each output once (which rank takes how many depends on start-up times: test_batch.py pins the sharing)
    assert len(lines) == 5 and {line["rank"] for line in lines} <= {0, 1}
    assert results[0].stdout.strip().splitlines()[-2].startswith("[batch] 5/5 done")   # rank 0 reports the set
    assert "[batch]" not in results[1].stdout


def test_placement_options_follow_the_loader_rule(tiny_dir, tmp_path):
    bad = "cuda:99"
    done = ursa("generate", "--model", tiny_dir, "--prompt", "x", "--out", tmp_path / "x.png", "--text-device", bad)
    assert done.returncode == 2 and done.stderr.strip().startswith(f"error: argument --text-device: "
                                                                 f"text_device='{bad}' is not allowed on this machine")
    done = ursa("generate", "--model", tiny_dir, "--prompt", "x", "--out", tmp_path / "x.png", "--steps", "2",
                "--vq-device", "cpu", "--text-device", "cpu")
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "x.png").size == (64, 64)


def test_cli_load_places_the_text_side_and_the_tokenizer(tiny_dir, monkeypatch):
    import torch

    from ursa_core.cli.generate_command import load_for_cli
    from ursa_core.runtime.lowvram import DetachedEmbedding
    from ursa_core.runtime.speed import SpeedOptions

    model = load_for_cli(tiny_dir, torch.device("cpu"), "fp32", SpeedOptions())  # default: the transformer's device
    assert not isinstance(model.transformer.model.embed_tokens, DetachedEmbedding)
    monkeypatch.setattr("ursa_core.rules.placement", lambda name, value: value)   # a device this machine lacks
    model = load_for_cli(tiny_dir, torch.device("cpu"), "fp32", SpeedOptions(vq_device="meta", text_device="meta"))
    assert model.transformer.model.embed_tokens.weight.device.type == "meta"
    assert model.visual_tokenizer.device.type == "meta" and model.device.type == "cpu"
