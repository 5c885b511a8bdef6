"""`ursa` (`python -m ursa_core`) {generate, decode, make-tiny, download} end to end, in-process via cli.main."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ursa_core import cli
from ursa_core.checkpoint.loader import load_model
from ursa_core.files.media import count_video_frames, fit_frames, load_image, to_model_pixels
from ursa_core.files.token_io import load_tokens

STEPS = "2"  # sampling steps for every generate here: enough to exercise the loop, cheap on 2 CPU cores


pytestmark = pytest.mark.usefixtures("ursa_cache")  # one $URSA_CACHE per module (conftest)


def write_random_png(path, width, height, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def gen(model, out, *extra, prompt="a red fox runs through the snow"):
    return cli.main(["generate", "--model", str(model), "--prompt", prompt, "--steps", STEPS, "--out", str(out),
                     *map(str, extra)])


def encoded(model, path, mode, width=64, height=64):
    """What the CLI must hold for a conditioning image: fit_frames -> to_model_pixels -> vae.encode, one frame."""
    pixels = to_model_pixels(fit_frames(load_image(path), width, height, mode)).to(model.visual_tokenizer.device, model.visual_tokenizer.dtype)
    with torch.no_grad():
        ids = model.visual_tokenizer.encode(pixels)
    assert ids.shape == (1, 1, height // model.geometry.spatial_stride, width // model.geometry.spatial_stride)
    return ids[:, 0].cpu().long()


# --- generate --model tiny ------------------------------------------------------------------------------------------


def test_generate_tiny_image_png(tmp_path, capsys, ursa_cache):
    from PIL import Image

    out = tmp_path / "out.png"
    assert gen("tiny", out) == 0
    captured = capsys.readouterr()
    assert "NOTE:" in captured.out and "noise" in captured.out
    with Image.open(out) as img:
        assert img.size == (64, 64)
    # the tiny checkpoint was built in $URSA_CACHE (and nothing else, e.g. no leftover .tmp folder)
    assert (ursa_cache / "tiny-random-fsq-v1" / "model_index.json").is_file()
    assert [p.name for p in ursa_cache.iterdir()] == ["tiny-random-fsq-v1"]


@pytest.mark.parametrize("frames", [5, 9])
def test_generate_tiny_video_mp4_frame_count(tmp_path, frames):
    out = tmp_path / "clip.mp4"
    assert gen("tiny", out, "--frames", frames) == 0
    assert count_video_frames(out) == frames


# --- conditioning images --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which,frames,mode", [("first", 5, "crop"), ("last", 5, "pad"), ("both", 9, "stretch")])
def test_conditioning_images_are_held_as_their_tokens(tmp_path, tiny_dir, tiny_model, which, frames, mode):
    first = write_random_png(tmp_path / "first.png", 80, 50, seed=1)   # wider than 64x64: crop/pad/stretch differ
    last = write_random_png(tmp_path / "last.png", 48, 90, seed=2)     # taller than 64x64
    extra = ["--frames", frames, "--resize", mode, "--seed", 7, "--save-tokens", tmp_path / "t.safetensors"]
    if which in ("first", "both"):
        extra += ["--image", first]
    if which in ("last", "both"):
        extra += ["--last-image", last]
    assert gen(tiny_dir, tmp_path / "clip.mp4", *extra) == 0
    tokens, meta = load_tokens(tmp_path / "t.safetensors")
    latent_t = (frames - 1) // tiny_model.geometry.temporal_stride + 1
    assert tokens.shape == (1, latent_t, 8, 8)
    assert meta["model"] == str(tiny_dir)
    enc_first, enc_last = encoded(tiny_model, first, mode), encoded(tiny_model, last, mode)
    assert not torch.equal(enc_first, enc_last)  # otherwise the checks below could not tell the frames apart
    if which in ("first", "both"):
        assert torch.equal(tokens[:, 0], enc_first)
    if which in ("last", "both"):
        assert torch.equal(tokens[:, -1], enc_last)
    if which == "first":
        assert not torch.equal(tokens[:, -1], enc_last)
    if which == "last":
        assert not torch.equal(tokens[:, 0], enc_first)
    assert count_video_frames(tmp_path / "clip.mp4") == frames


def test_conditioning_image_uses_the_resize_mode(tmp_path, tiny_model):
    """The encode in the test above is only meaningful if the modes give different tokens for these images."""
    first = write_random_png(tmp_path / "first.png", 80, 50, seed=1)
    crop, pad = encoded(tiny_model, first, "crop"), encoded(tiny_model, first, "pad")
    assert not torch.equal(crop, pad)


# --- determinism ----------------------------------------------------------------------------------------------------


def test_same_seed_same_tokens_other_seed_differs(tmp_path, tiny_dir):
    def tokens(name, seed):
        path = tmp_path / f"{name}.safetensors"
        assert gen(tiny_dir, tmp_path / f"{name}.png", "--seed", seed, "--save-tokens", path) == 0
        return load_tokens(path)[0]

    a, b, c = tokens("a", 3), tokens("b", 3), tokens("c", 4)
    assert a.shape == (1, 1, 8, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_low_vram_blocks_and_fp8_storage_flags(tmp_path, tiny_dir):
    """Streaming with one resident layer is exact; fp8 weight storage runs and changes only rounding."""
    def tokens(name, *flags):
        path = tmp_path / f"{name}.safetensors"
        assert gen(tiny_dir, tmp_path / f"{name}.png", "--seed", 5, "--save-tokens", path, *flags) == 0
        return load_tokens(path)[0]

    plain = tokens("plain")
    assert torch.equal(tokens("streamed", "--low-vram", "--blocks-on-gpu", 1), plain)
    assert tokens("fp8", "--weight-dtype", "fp8_e4m3fn").shape == plain.shape


@pytest.mark.parametrize("flag, value", [("--weight-dtype", "fp4"), ("--blocks-on-gpu", "-1")])
def test_memory_flags_reject_bad_values(tmp_path, capsys, flag, value):
    assert gen("tiny", tmp_path / "out.png", flag, value) == 2
    err = capsys.readouterr().err
    assert value in err and len(err.strip().splitlines()) == 1


# --- errors: exit code 2 and a message naming the value -------------------------------------------------------------


@pytest.mark.parametrize("extra,expected", [
    (["--frames", "4"], ["frames=4"]),
    (["--height", "30"], ["height=30"]),
    (["--width", "65"], ["width=65"]),
    (["--frames", "1", "--last-image", "{last}"], ["--last-image", "--frames 5"]),
    (["--image", "{missing}"], ["image not found", "nope.png"]),
])
def test_generate_bad_arguments_exit_2(tmp_path, capsys, extra, expected):
    last = write_random_png(tmp_path / "last.png", 64, 64, seed=3)
    extra = [e.format(last=last, missing=tmp_path / "nope.png") for e in extra]
    out = tmp_path / "out.png"
    assert gen("tiny", out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err
    assert not out.exists()


def test_generate_missing_model_folder_exit_2(tmp_path, capsys):
    folder = tmp_path / "no-such-model"
    assert gen(folder, tmp_path / "out.png") == 2
    err = capsys.readouterr().err
    assert "error: " in err and str(folder) in err and "not found" in err


def test_generate_unsupported_extension_exit_2(tmp_path, capsys):
    out = tmp_path / "x.gif"
    assert gen("tiny", out) == 2
    err = capsys.readouterr().err
    assert ".gif" in err and ".png" in err and ".mp4" in err
    assert not out.exists()


def test_generate_bad_resize_is_an_argparse_error(tmp_path, capsys):
    assert gen("tiny", tmp_path / "out.png", "--resize", "zoom") == 2
    assert "zoom" in capsys.readouterr().err


# --- download -------------------------------------------------------------------------------------------------------


def test_download_offline_exit_3(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    calls = []

    def offline(**kw):
        calls.append(kw)
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert cli.main(["download", "BAAI/URSA-1.7B-FSQ320", "--dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "could not download" in err and "offline" in err.lower()
    assert "BAAI/URSA-1.7B-FSQ320" in err and "no network" in err
    assert calls and calls[0]["repo_id"] == "BAAI/URSA-1.7B-FSQ320"


def test_download_lands_complete_folder_and_leaves_no_work_folder(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    seen = {}

    def fake(repo_id, local_dir, **kw):
        seen.update(repo_id=repo_id, local_dir=local_dir)
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "model_index.json").write_text("{}")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    models = tmp_path / "models"
    assert cli.main(["download", "BAAI/URSA-1.7B-IBQ1024", "--dir", str(models)]) == 0
    expected = models / "URSA-1.7B-IBQ1024"
    assert seen["repo_id"] == "BAAI/URSA-1.7B-IBQ1024"
    assert Path(seen["local_dir"]).parent == models and seen["local_dir"] != str(expected)  # downloaded beside it
    assert (expected / "model_index.json").read_text() == "{}"
    assert [p.name for p in models.iterdir()] == ["URSA-1.7B-IBQ1024"]
    out = capsys.readouterr().out
    assert "BAAI/URSA-1.7B-IBQ1024" in out and str(expected) in out


def test_failed_download_keeps_the_existing_folder(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def half_then_offline(repo_id, local_dir, **kw):
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "model_index.json").write_text("half")
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", half_then_offline)
    old = tmp_path / "URSA-1.7B-FSQ320"
    old.mkdir()
    (old / "model_index.json").write_text("old")
    assert cli.main(["download", "BAAI/URSA-1.7B-FSQ320", "--dir", str(tmp_path)]) == 3
    assert (old / "model_index.json").read_text() == "old"
    err = capsys.readouterr().err
    assert "hf download BAAI/URSA-1.7B-FSQ320 --local-dir" in err and "huggingface-cli" not in err


# --- make-tiny ------------------------------------------------------------------------------------------------------


def test_make_tiny_sharded_loads_like_the_unsharded_one(tmp_path, capsys, tiny_dir):
    folder = tmp_path / "sharded"
    assert cli.main(["make-tiny", str(folder), "--shard", "--seed", "0"]) == 0
    assert str(folder) in capsys.readouterr().out
    index = folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    assert index.is_file()
    weight_map = json.loads(index.read_text())["weight_map"]
    assert weight_map and all((folder / "transformer" / f).is_file() for f in set(weight_map.values()))
    assert not (folder / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    # same seed as the (unsharded) fixture -> same tokens
    for name, model in (("sharded", folder), ("plain", tiny_dir)):
        assert gen(model, tmp_path / f"{name}.png", "--seed", 5, "--save-tokens", tmp_path / f"{name}.safetensors") == 0
    assert torch.equal(load_tokens(tmp_path / "sharded.safetensors")[0], load_tokens(tmp_path / "plain.safetensors")[0])


def test_make_tiny_ibq_generates_images_only(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "ibq"
    assert cli.main(["make-tiny", str(folder), "--vae", "ibq", "--seed", "1"]) == 0
    assert json.loads((folder / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderVQ"
    model = load_model(folder, device="cpu", dtype="fp32")
    stride = model.geometry.spatial_stride
    assert model.geometry.image_only and 64 % stride == 0
    capsys.readouterr()

    out = tmp_path / "ibq.png"
    assert gen(folder, out, "--height", 64, "--width", 64, "--save-tokens", tmp_path / "ibq.safetensors") == 0
    assert "noise" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (64, 64)
    assert load_tokens(tmp_path / "ibq.safetensors")[0].shape == (1, 1, 64 // stride, 64 // stride)

    assert gen(folder, tmp_path / "ibq.mp4", "--frames", 5) == 2
    assert "frames=5" in capsys.readouterr().err
    assert not (tmp_path / "ibq.mp4").exists()


def test_module_entry_point_exit_code(tmp_path):
    """`python -m ursa_core` itself (one subprocess) reaches cli.main and exits with its code."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "ursa_core", "generate", "--model", str(tmp_path / "missing"),
                             "--prompt", "x", "--out", str(tmp_path / "o.png")], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert "model folder not found" in result.stderr


def test_download_refuses_a_malformed_repo_id_as_bad_input(tmp_path, capsys):
    assert cli.main(["download", "../..", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a Hugging Face repo id" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_decode_names_a_recorded_model_folder_that_is_gone_and_suggests_model(tmp_path, tiny_dir, capsys):
    """Issue 17: the token file records its model's folder; when it was moved or deleted, the one line says so and
    what to pass, and `--model` with the same model elsewhere decodes."""
    import shutil

    model = shutil.copytree(tiny_dir, tmp_path / "moved-model")
    tokens = tmp_path / "t.safetensors"
    assert gen(model, tmp_path / "g.png", "--save-tokens", tokens) == 0
    shutil.rmtree(model)
    capsys.readouterr()
    assert cli.main(["decode", "--tokens", str(tokens), "--out", str(tmp_path / "d.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(model) in lines[0] and "--model" in lines[0], lines
    assert "moved or deleted" in lines[0]
    assert cli.main(["decode", "--tokens", str(tokens), "--out", str(tmp_path / "d.png"), "--model",
                     str(tiny_dir)]) == 0
    assert (tmp_path / "d.png").read_bytes() == (tmp_path / "g.png").read_bytes()


def test_decode_with_a_missing_model_folder_says_not_found(tmp_path, tiny_dir, capsys):
    tokens = tmp_path / "t.safetensors"
    assert gen(tiny_dir, tmp_path / "g.png", "--save-tokens", tokens) == 0
    capsys.readouterr()
    assert cli.main(["decode", "--tokens", str(tokens), "--out", str(tmp_path / "d.png"), "--model",
                     str(tmp_path / "nope")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "nope" in lines[0] and "not found" in lines[0], lines
