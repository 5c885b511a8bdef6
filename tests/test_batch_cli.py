"""`ursa batch` end to end on the tiny checkpoint: names, manifest, resume (stale temporaries removed; outputs made
under other settings refused or regenerated, never mixed), the presets' files, names and items checked before any
weight loads, one run per output folder, and 2 gloo ranks sharing the set. Failures under torchrun: test_ranks.py."""
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from test_parallel import launch
from ursa_core.batch.presets import VBENCH_NEGATIVE
from ursa_core.batch.run_lock import LOCK_NAME
from ursa_core.cli import main as cli_main
from ursa_core.files.media import count_video_frames

FAST = ["--height", "32", "--width", "32", "--steps", "2"]
ROOT = Path(__file__).resolve().parents[1]   # run this checkout's ursa_core, not an installed one


def ursa(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ursa_core", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def batch(capsys, *args) -> tuple[int, str, str]:
    """`ursa batch ...` in this process: (exit code, stdout, stderr)."""
    code = cli_main(["batch", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def outputs(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "manifest.jsonl"}


def test_jsonl_set_names_manifest_and_resume(tiny_dir, tmp_path, capsys):
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "first.png")     # relative to the prompt file
    items = [{"prompt": "a fox", "id": "fox", "seed": 40},
             {"prompt": "a dog", "frames": 5, "cfg": 3.0, "image": "first.png"}]
    prompts = tmp_path / "set.jsonl"
    prompts.write_text("\n".join(map(json.dumps, items)))
    out = tmp_path / "out"
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, "--samples", 2,
                              *FAST)
    assert code == 0, err
    dog = sorted(p.name for p in out.glob("a_dog-*.mp4"))
    assert len(dog) == 2 and dog[0].endswith("-0.mp4") and dog[1].endswith("-1.mp4")
    assert sorted(p.name for p in out.iterdir()) == sorted(["fox-0.png", "fox-1.png", *dog, "manifest.jsonl"])
    assert Image.open(out / "fox-0.png").size == (32, 32) and count_video_frames(out / dog[1]) == 5
    lines = {line["out"]: line for line in manifest(out)}
    assert [lines[n]["samples"][0]["seed"] for n in ("fox-0.png", "fox-1.png")] == [40, 41]
    first_dog = lines[dog[0]]
    dog_settings = first_dog["settings"][0]
    assert (dog_settings["frames"], dog_settings["cfg"], dog_settings["steps"], dog_settings["motion"]) == \
        (5, 3.0, 2, 9.0)
    assert first_dog["samples"][0]["settings"]["image"] == "first.png"
    assert len(dog_settings["image_sha256"]) == 64 and lines["fox-0.png"]["settings"][0]["image_sha256"] is None
    assert first_dog["samples"][0]["identity"] == "a dog\n0" and first_dog["seed_rule"]
    progress = [line.split(",")[0] for line in stdout.splitlines() if line.startswith("[batch]")]
    assert progress == ["[batch] 1/4 done", "[batch] 2/4 done", "[batch] 3/4 done", "[batch] 4/4 done"]

    # a killed run: one output never renamed into place, its temporary left behind
    (out / "fox-1.png").unlink()
    stale = out / ".fox-1.png.0badc0de.partial.png"
    stale.write_bytes(b"half a file")
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, "--samples", 2,
                              *FAST)
    assert code == 0, err
    assert "removed 1 unfinished temporary" in stdout and not stale.exists()
    assert "wrote 1, skipped 3 finished" in stdout
    # the set's rate counts rendered clips only: a skipped output is not a clip made in no time
    rates = [line for line in stdout.splitlines() if line.startswith("[batch]")]
    assert rates[0].endswith("(already there)") and all("clips/hour" in line for line in rates[1:])
    assert Counter(line["out"] for line in manifest(out)) == Counter(["fox-0.png", "fox-1.png", *dog, "fox-1.png"])
    assert not (out / LOCK_NAME).exists()                       # the run's lock goes with it


def test_a_manifest_seed_reproduces_the_output_with_ursa_generate(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "set.txt"
    prompts.write_text("a red fox\n")
    out = tmp_path / "out"
    assert batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, "--seed", 9, *FAST)[0] == 0
    (line,) = manifest(out)
    assert cli_main(["generate", "--model", str(tiny_dir), "--prompt", "a red fox", "--seed",
                     str(line["samples"][0]["seed"]), "--out", str(tmp_path / "again.png"), *FAST]) == 0
    assert (tmp_path / "again.png").read_bytes() == (out / line["out"]).read_bytes()


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_an_item_added_at_the_top_renders_only_itself(tiny_dir, tmp_path, capsys, fmt):
    def write_set(texts):
        if fmt == "jsonl":
            body = "\n".join(json.dumps({"prompt": t, "id": t.replace(" ", "_")}) for t in texts)
        else:
            body = "\n".join(texts)
        path = tmp_path / f"set.{fmt}"
        path.write_text(body + "\n")
        return path
    texts = [f"prompt {i}" for i in range(4)]
    out = tmp_path / "out"
    assert batch(capsys, "--model", tiny_dir, "--prompts", write_set(texts), "--outdir", out, *FAST)[0] == 0
    before = outputs(out)
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", write_set(["a new first"] + texts),
                              "--outdir", out, *FAST)
    assert code == 0, err
    assert "wrote 1, skipped 4 finished" in stdout
    after = outputs(out)
    assert len(after) == 5 and all(after[name] == data for name, data in before.items())   # nothing else changed
    from ursa_core.batch.prompt_sets import read_jobs
    seeds = {job.out: job.samples[0].seed for job in read_jobs(tmp_path / f"set.{fmt}", ext=".png")}
    assert {line["out"]: line["samples"][0]["seed"] for line in manifest(out)} == seeds   # one seeding, never two


def test_a_resume_with_other_settings_refuses_or_regenerates(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "set.txt"
    prompts.write_text("a fox\na dog\n")
    out = tmp_path / "out"
    assert batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST)[0] == 0
    other = ["--height", "64", "--width", "64", "--steps", "2"]
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *other)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "2 finished output(s) there were made under another seed rule or other settings" in err
    assert "height = 32 (this run: 64)" in err and "--overwrite-stale" in err
    assert all(Image.open(p).size == (32, 32) for p in out.glob("*.png"))   # refused before anything changed
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *other,
                              "--overwrite-stale")
    assert code == 0, err
    assert "regenerating 2 stale output(s)" in stdout and "wrote 2, skipped 0" in stdout
    assert sorted(Image.open(p).size for p in out.glob("*.png")) == [(64, 64), (64, 64)]
    assert batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *other)[0] == 0


def test_outputs_of_the_old_position_seeding_are_never_mixed_in(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "set.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "out"
    assert batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST)[0] == 0
    (line,) = manifest(out)
    del line["seed_rule"]                                     # a manifest line as ursa wrote it before this rule
    (out / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    code, _, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST)
    assert code == 2 and "made before seeds followed the item" in err


def test_a_folder_locked_by_a_live_run_is_refused_and_a_dead_runs_lock_taken_over(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "set.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"host": os.uname().nodename, "pid": sleeper.pid, "token": "t", "started": time.time(), "ranks": 1}
        (out / LOCK_NAME).write_text(json.dumps(lock))
        code, _, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"another run is writing there (pid {sleeper.pid} on {lock['host']}" in err and LOCK_NAME in err
        assert not list(out.glob("*.png"))
    finally:
        sleeper.kill()
        sleeper.wait()
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST)
    assert code == 0, err
    assert f"took over the lock of a run that is gone (pid {sleeper.pid})" in stdout
    assert len(list(out.glob("*.png"))) == 1 and not (out / LOCK_NAME).exists()
    lock.update(host="another-machine", pid=1)                # a run elsewhere cannot be checked from here
    (out / LOCK_NAME).write_text(json.dumps(lock))
    code, _, err = batch(capsys, "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST)
    assert code == 2 and "(pid 1 on another-machine" in err


def test_two_runs_started_on_one_folder_never_interleave(tiny_dir, tmp_path):
    prompts = tmp_path / "set.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(6)))
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "ursa_core", "batch", "--model", str(tiny_dir), "--prompts",
                              str(prompts), "--outdir", str(out), *FAST], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / LOCK_NAME).exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        second = ursa("batch", "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert second.returncode == 2 and "another run is writing there" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert Counter(line["out"] for line in manifest(out)) == Counter(p.name for p in out.glob("*.png"))
    assert len(manifest(out)) == 6


def test_bad_names_and_items_are_one_line_before_any_weight_loads(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir, tmp_path / "no-weights")
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()                      # loading would fail: the item's rule must come first
    prompts = tmp_path / "set.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "a fox", "frames": 3}\n')
    done = ursa("batch", "--model", folder, "--prompts", prompts, "--outdir", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: item 'a fox': frames=3 is not allowed: use 1 (an image) or "
                                   "1 + 4k frames (5, 9, ..., 241)")
    assert not (tmp_path / "out").exists()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "a fox", "frames": 5, "image": "broken.png"}\n')
    done = ursa("batch", "--model", folder, "--prompts", prompts, "--outdir", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: item 'a fox': ") and "broken.png" in done.stderr
    prompts.write_text('{"prompt": "ok", "id": "fine"}\n{"prompt": "x", "id": "nul\\u0000here"}\n')
    done = ursa("batch", "--model", folder, "--prompts", prompts, "--outdir", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "contains NUL (U+0000), which no file name can hold" in done.stderr
    assert not (tmp_path / "out").exists()


def test_long_names_are_shortened_and_the_manifest_keeps_them(tiny_dir, tmp_path, capsys):
    long_id = "id-" + "x" * 300
    prompts = tmp_path / "set.jsonl"
    prompts.write_text(json.dumps({"prompt": "a fox", "id": long_id}) + "\n")
    vbench = tmp_path / "vbench"
    vbench.mkdir()
    long_prompt = "\u4e00\u53ea\u732b\u5728\u96ea\u5730\u91cc\u5954\u8dd1" * 10      # 90 characters, 270 bytes
    (vbench / "custom.txt").write_text(long_prompt)
    (vbench / "custom_longer.txt").write_text("a cat runs through snow")
    for prompt_set, extra in ((prompts, []), (vbench, ["--frames", "5", "--samples", "1", "--dtype", "fp32"])):
        out = tmp_path / f"out-{prompt_set.name}"
        code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", prompt_set, "--outdir", out, *FAST,
                                  *extra)
        assert code == 0, err
        assert "1 output name(s) were too long for the filesystem" in stdout
        (line,) = manifest(out)
        assert (out / line["out"]).is_file() and "~" in line["out"]
        assert line["full_name"] in (f"{long_id}-0.png", f"custom/{long_prompt}-0.mp4")


def test_geneval_official_metadata_end_to_end(tiny_dir, tmp_path, capsys):
    metadata = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
                {"tag": "colors", "include": [{"class": "cake", "count": 1, "color": "yellow"}],
                 "prompt": "a photo of a yellow cake"}]
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(map(json.dumps, metadata)) + "\n")
    out = tmp_path / "geneval"
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", path, "--outdir", out, "--samples", 1,
                              "--dtype", "fp32", *FAST)
    assert code == 0, err
    assert "GenEval protocol of baaivision/URSA@626dfd3 evaluations/geneval/sample.py" in stdout
    assert "differs from it: samples=1 (reference 4), height=32 (reference 1024)" in stdout
    assert "has no 'dense_prompt' prompts (the reference samples them): sampling 'prompt'" in stdout
    for index, meta in enumerate(metadata):
        folder = out / f"{index:05d}"
        assert (folder / "samples" / "00000.png").is_file()
        assert (folder / "metadata.jsonl").read_text() == json.dumps(meta)      # as json.dump writes it
    assert {line["samples"][0]["prompt"] for line in manifest(out)} == {m["prompt"] for m in metadata}


def test_vbench_and_dpgbench_end_to_end(tiny_dir, tmp_path, capsys):
    vbench = tmp_path / "vbench"
    vbench.mkdir()
    (vbench / "color.txt").write_text("a red bicycle\n")
    (vbench / "color_longer.txt").write_text("A vibrant red bicycle on a cobblestone street.\n")
    out = tmp_path / "vb"
    code, stdout, err = batch(capsys, "--model", tiny_dir, "--prompts", vbench, "--outdir", out, "--frames", 5,
                              "--samples", 2, "--dtype", "fp32", *FAST)
    assert code == 0, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == \
        ["color/a red bicycle-0.mp4", "color/a red bicycle-1.mp4"]
    line = manifest(out)[0]
    assert line["samples"][0]["prompt"] == "A vibrant red bicycle on a cobblestone street."
    assert (line["settings"][0]["negative"], line["settings"][0]["motion"]) == (VBENCH_NEGATIVE, 9.0)
    assert "VBench protocol" in line["protocol"]
    dpg = tmp_path / "dpg" / "prompts.json"
    dpg.parent.mkdir()
    dpg.write_text(json.dumps([{"id": "p7", "prompt": "two cats"}]))
    code, _, err = batch(capsys, "--model", tiny_dir, "--prompts", dpg, "--outdir", tmp_path / "dpg_out",
                         "--dtype", "fp32", *FAST)
    assert code == 0, err
    assert Image.open(tmp_path / "dpg_out" / "p7.png").size == (64, 64)   # 2x2 grid of 32x32 samples
    code, _, err = batch(capsys, "--model", tiny_dir, "--prompts", dpg, "--outdir", tmp_path / "dpg_2",
                         "--height", 32, "--width", 64, "--steps", 2)
    assert code == 2 and "scorer crops square tiles" in err


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
    assert not (out / LOCK_NAME).exists()


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
