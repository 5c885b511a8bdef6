"""The bad-input table (issue 9): every bad value gives ONE line naming the value and the rule, before any work, and
no file is lost.

CLI: `ursa_core.cli.main` in-process (exit code, one stderr line, no traceback, the model never loads for inputs that
can be checked from the json files, a pre-existing --out file unchanged). API: the exception type and message, and no
sampling step ran. Nodes: `validate_inputs` as ComfyUI core runs it (tests/comfy_stubs.py), or `execute` where only
the run can tell; then the next good run of the same node succeeds.
"""
from __future__ import annotations

import importlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ursa_core import cli
from ursa_core.checkpoint.loader import load_model
from ursa_core.cli import generate_command as cli_generate
from ursa_core.errors import CheckpointError, InputError, URSAError
from ursa_core.files.media import load_image
from ursa_core.runtime import memory
from ursa_core.sampling.generate import generate

from image_files import huge_png, png_bytes, truncated_png

SENTINEL = b"an earlier result that must survive a failed run\n"


def _must_not_load(*_args, **_kwargs):
    raise AssertionError("the model was loaded although the input could be checked before")


# --- CLI ------------------------------------------------------------------------------------------------------------


@dataclass
class CliCase:
    argv: list[str]
    expect: tuple[str, ...]           # substrings of the one error line
    loads: bool = False               # True where only a loaded model can tell (e.g. writing the output)
    codes: tuple[int, ...] = (2,)
    out: str = "out.png"


CLI_CASES = {
    "frames-6": CliCase(["--frames", "6"], ("frames=6", "1 + 4k")),
    "frames-0": CliCase(["--frames", "0"], ("frames=0", "1 + 4k")),
    "frames-4001": CliCase(["--frames", "4001"], ("frames=4001", "241")),
    "frames-not-int": CliCase(["--frames", "abc"], ("'abc'", "integer")),
    "height-0": CliCase(["--height", "0"], ("height=0", "multiple of 8")),
    "width-30": CliCase(["--width", "30"], ("width=30", "multiple of 8")),
    "width-too-big": CliCase(["--width", "8192"], ("width=8192", "4096")),
    "steps-0": CliCase(["--steps", "0"], ("steps=0", "from 1 to")),
    "steps-negative": CliCase(["--steps", "-3"], ("steps=-3", "from 1 to")),
    "cfg-nan": CliCase(["--cfg", "nan"], ("cfg=nan", "finite")),
    "cfg-inf": CliCase(["--cfg", "inf"], ("cfg=inf", "finite")),
    "cfg-negative": CliCase(["--cfg", "-1"], ("cfg=-1.0", "from 0")),
    "guidance-trunc-1.5": CliCase(["--guidance-trunc", "1.5"], ("guidance_trunc=1.5", "to 1")),
    "guidance-trunc-nan": CliCase(["--guidance-trunc", "nan"], ("guidance_trunc=nan", "finite")),
    "shift-0": CliCase(["--shift", "0"], ("shift=0.0", "above 0")),
    "motion-11": CliCase(["--motion", "11"], ("motion=11.0", "to 10")),
    "seed-negative": CliCase(["--seed", "-1"], ("seed=-1", "from 0")),
    "seed-2**64": CliCase(["--seed", str(2 ** 64)], (f"seed={2 ** 64}",)),
    "dtype-fp8": CliCase(["--dtype", "fp8"], ("dtype='fp8'", "auto, bf16, fp16, fp32")),
    "device-banana": CliCase(["--device", "banana"], ("device='banana'", "cpu")),
    "device-cuda-7": CliCase(["--device", "cuda:7"], ("device='cuda:7'", "not available")),
    "attention-cudnn-on-cpu": CliCase(["--device", "cpu", "--attention", "cudnn"],
                                      ("attention='cudnn'", "not available on cpu", "math")),
    "attention-efficient-on-cpu": CliCase(["--device", "cpu", "--attention", "efficient"],
                                          ("attention='efficient'", "CUDA")),
    "attention-flash-on-cpu": CliCase(["--device", "cpu", "--attention", "flash"], ("attention='flash'", "CUDA")),
    "attention-unknown": CliCase(["--attention", "xformers"], ("attention='xformers'", "auto, sdpa")),
    "sampler-triton-on-cpu": CliCase(["--device", "cpu", "--sampler", "triton"], ("sampler='triton'", "torch")),
    "sampler-unknown": CliCase(["--sampler", "fast"], ("sampler='fast'", "auto, torch, triton")),
    "resize-unknown": CliCase(["--resize", "zoom"], ("'zoom'", "crop")),
    "out-gif": CliCase([], (".gif", ".png", ".mp4"), out="out.gif"),
    "last-image-on-an-image": CliCase(["--last-image", "{png}"], ("--last-image", "--frames 5")),
    "image-missing": CliCase(["--frames", "5", "--image", "{tmp}/nope.png"], ("image not found", "nope.png"),
                             out="out.mp4"),
    "last-image-missing": CliCase(["--frames", "5", "--last-image", "{tmp}/nope.png"],
                                  ("--last-image", "image not found"), out="out.mp4"),
    # Image files (issue 17): one line naming the file, before the model loads, whatever is wrong inside the file.
    "image-20000x20000": CliCase(["--frames", "5", "--image", "{huge}"], ("huge.png", "20000x20000", "8192x8192"),
                                 out="out.mp4"),
    "last-image-over-the-pixel-limit": CliCase(["--frames", "5", "--last-image", "{big_header}"],
                                               ("big_header.png", "9000x9000", "67,108,864"), out="out.mp4"),
    "image-truncated-data": CliCase(["--frames", "5", "--image", "{truncated}"], ("truncated.png",), out="out.mp4"),
    "image-empty-file": CliCase(["--frames", "5", "--image", "{empty}"], ("empty.png", "not an image"),
                                out="out.mp4"),
    "model-folder-missing": CliCase(["--model", "{tmp}/no-model"], ("no-model", "not found")),
    "config-rope-theta-abc": CliCase(["--model", "{bad_rope}"], ("config.json", "'rope_theta'", "'abc'", "number")),
    "config-spatial-stride-eight": CliCase(["--model", "{bad_stride}"],
                                           ("vae", "config.json", "'spatial_stride'", "'eight'", "integer")),
    "ibq-video": CliCase(["--model", "{ibq}", "--frames", "5"], ("frames=5", "single images")),
    "ibq-width-40": CliCase(["--model", "{ibq}", "--width", "40", "--height", "64"], ("width=40", "multiple of 16")),
    "memory-does-not-fit": CliCase(["--frames", "241", "--width", "4096", "--height", "4096"],
                                   ("needs about", "GiB", "RAM available", "fewer frames")),
    # Paint with a mask (issue 18): every source, mask and flag rule before the model loads.
    "mask-without-source": CliCase(["--mask", "{mask}"], ("--mask repaints a source", "--image or --video")),
    "video-without-what-to-repaint": CliCase(["--video", "{video9}"], ("--video is the source of a repaint",
                                                                       "--mask, --outpaint or --strength"),
                                             out="out.mp4"),
    "image-and-video": CliCase(["--image", "{png}", "--video", "{video9}", "--mask", "{mask}"],
                               ("--image and --video both given",)),
    "mask-frames-unlike-the-video": CliCase(["--video", "{video9}", "--mask", "{video5}"],
                                            ("the mask has 5 frames but the video has 9",), out="out.mp4"),
    "video-frames-not-1-plus-4k": CliCase(["--video", "{video7}", "--strength", "0.5"],
                                          ("has 7 frames", "1 + 4k", "--frames 5"), out="out.mp4"),
    "video-shorter-than-frames": CliCase(["--video", "{video7}", "--strength", "0.5", "--frames", "9"],
                                         ("--frames 9 but the video", "has 7 frames"), out="out.mp4"),
    "image-canvas-with-frames": CliCase(["--image", "{png}", "--mask", "{mask}", "--frames", "5"],
                                        ("--image is the canvas of one picture", "--video"), out="out.mp4"),
    "mask-missing": CliCase(["--image", "{png}", "--mask", "{tmp}/nope.png"], ("--mask: file not found",)),
    "mask-not-an-image": CliCase(["--image", "{png}", "--mask", "{not_an_image}"],
                                 ("not_an_image.png", "not an image")),
    "mask-empty-file": CliCase(["--image", "{png}", "--mask", "{empty}"], ("empty.png", "not an image")),
    "strength-1.5": CliCase(["--image", "{png}", "--strength", "1.5"], ("strength=1.5", "to 1")),
    "grow-negative": CliCase(["--image", "{png}", "--mask", "{mask}", "--grow", "-1"], ("grow=-1", "from 0")),
    "outpaint-three-numbers": CliCase(["--image", "{png}", "--outpaint", "1,2,3"], ("outpaint='1,2,3'", "L,R,T,B")),
    "outpaint-off-the-stride": CliCase(["--image", "{png}", "--outpaint", "3,0,0,0"],
                                       ("67x64 pixels", "multiple of 8", "width and height")),
    "image-to-video-of-one-frame": CliCase(["--image", "{png}"], ("--image is the first frame of a video",
                                                                   "--frames 5", "--mask")),
    "last-image-in-a-repaint": CliCase(["--image", "{png}", "--mask", "{mask}", "--last-image", "{png}"],
                                       ("--last-image", "repaint")),
    # Output files (issue 9's atomic writes): one line, a non-zero exit, the existing file intact.
    "non-image-as-image": CliCase(["--frames", "5", "--image", "{not_an_image}"], ("not_an_image.png", "not an image"),
                                  out="out.mp4"),
    "png-unwritable": CliCase([], ("/proc/ursa_out.png",), loads=True, codes=(1, 2), out="/proc/ursa_out.png"),
    "mp4-unwritable": CliCase(["--frames", "5"], ("/proc/ursa_out.mp4",), loads=True, codes=(1, 2),
                              out="/proc/ursa_out.mp4"),
    "out-below-a-file": CliCase([], ("afile.png/o.png", "afile.png is a file, not a directory"),
                                out="{tmp}/afile.png/o.png"),
    "out-is-a-directory": CliCase([], ("folder.png",), loads=True, codes=(1, 2), out="{tmp}/folder.png"),
    "save-tokens-unwritable": CliCase(["--save-tokens", "/proc/ursa_tokens.safetensors"],
                                      ("/proc/ursa_tokens.safetensors",), loads=True, codes=(1, 2)),
    # Models, fine-tunes and LoRAs (issue 23): all refused before the model loads.
    "preset-unknown": CliCase(["--preset", "fast"], ("preset='fast'", "none, rl_tuned")),
    "lora-strength-nan": CliCase(["--lora", "{lora}:nan"], ("strength=nan", "finite")),
    "lora-strength-inf": CliCase(["--lora", "{lora}:inf"], ("strength=inf", "finite")),
    "lora-not-tensors": CliCase(["--lora", "{lora_ckpt}"], ("lora.ckpt", "not a tensor file")),
    "lora-another-size": CliCase(["--lora", "{big_lora}"], ("lora_down.weight", "(512, 256)", "another model size")),
    "lora-pickle-with-code": CliCase(["--lora", "{evil}"], ("evil.bin", "refused: not a tensors-only file")),
    "weights-pickle-with-code": CliCase(["--transformer-weights", "{evil}"], ("evil.bin", "refused")),
    "weights-other-tokenizer": CliCase(["--transformer-weights", "{ibq_weights}"],
                                       ("made for a visual tokenizer of 512 codes", "64000")),
    "weights-not-tensors": CliCase(["--transformer-weights", "{gguf}"], (".gguf", "not a tensor file")),
}


def _broken_copy(src, dst, relative: str, key: str, value):
    shutil.copytree(src, dst)
    path = dst / relative
    raw = json.loads(path.read_text())
    raw[key] = value
    path.write_text(json.dumps(raw))
    return dst


@pytest.fixture(scope="module")
def cli_places(tmp_path_factory, tiny_dir, tiny_ibq_dir):
    from PIL import Image

    root = tmp_path_factory.mktemp("bad_cli")
    from ursa_core.files.media import write_mp4

    Image.new("RGB", (64, 64), (200, 30, 30)).save(root / "last.png")
    Image.new("L", (64, 64), 255).save(root / "mask.png")
    (root / "not_an_image.png").write_text("this is text, not an image")
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png_bytes(64, 64, 8, 2)[:60])   # the header and a cut data stream
    videos = {f"video{n}": str(write_mp4(torch.rand(n, 64, 64, 3), root / f"clip{n}.mp4")) for n in (5, 7, 9)}
    return {"model": str(tiny_dir), "ibq": str(tiny_ibq_dir), "png": str(root / "last.png"),
            "not_an_image": str(root / "not_an_image.png"), "huge": str(huge_png(root / "huge.png")),
            "big_header": str(truncated_png(root / "big_header.png")), "truncated": str(root / "truncated.png"),
            "empty": str(root / "empty.png"), "mask": str(root / "mask.png"), **videos,
            **_model_files(root, tiny_ibq_dir),
            "bad_rope": str(_broken_copy(tiny_dir, root / "rope", "transformer/config.json", "rope_theta", "abc")),
            "bad_stride": str(_broken_copy(tiny_dir, root / "stride", "vae/config.json", "spatial_stride", "eight"))}


def _model_files(root: Path, ibq_dir: Path) -> dict:
    """A LoRA for the tiny model, one for a wider model, a pickle that runs code, IBQ transformer weights."""
    from safetensors.torch import save_file

    from ursa_core.files.safetensors_io import load_state_dict
    from test_transformer_weights import malicious

    def lora(path, width, rows):
        save_file({"model.layers.0.mlp.up_proj.lora_down.weight": torch.zeros(2, width),
                   "model.layers.0.mlp.up_proj.lora_up.weight": torch.zeros(rows, 2)}, str(path))
        return str(path)
    save_file(load_state_dict(ibq_dir / "transformer"), str(root / "ibq_weights.safetensors"))
    (root / "lora.ckpt").write_bytes(b"x")
    (root / "weights.gguf").write_bytes(b"x")
    return {"lora": lora(root / "lora.safetensors", 64, 128), "big_lora": lora(root / "big.safetensors", 256, 512),
            "evil": str(malicious(root / "evil.bin", root / "payload_ran")),
            "ibq_weights": str(root / "ibq_weights.safetensors"), "lora_ckpt": str(root / "lora.ckpt"),
            "gguf": str(root / "weights.gguf")}


def _error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's progress redraws (they are progress, not messages)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("sampling")]


@pytest.mark.parametrize("case", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_bad_input(case: CliCase, cli_places, tmp_path, capsys, monkeypatch):
    places = {**cli_places, "tmp": str(tmp_path)}
    out = case.out.format(**places)
    out = out if out.startswith("/") else str(tmp_path / out)
    argv_out = out
    if out.endswith("folder.png"):
        (tmp_path / "folder.png").mkdir()
        (tmp_path / "folder.png" / "inside.txt").write_bytes(SENTINEL)
    elif "afile.png/" in out:
        (tmp_path / "afile.png").write_bytes(SENTINEL)   # the file in the way is an earlier result
        out = str(tmp_path / "afile.png")                 # ... checked below
    else:
        try:
            with open(out, "wb") as f:  # a result from an earlier run, which a failed run must not touch
                f.write(SENTINEL)
        except OSError:
            pass  # /proc/...: nothing can exist there
    if not case.loads:
        monkeypatch.setattr(cli_generate, "load_model", _must_not_load)
    if case.expect[0] == "needs about":  # the same refusal on any machine: this one has 8 GiB of RAM
        monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * memory.GiB)
    argv = ["generate", "--model", places["model"], "--prompt", "a red fox", "--steps", "1", "--out", argv_out,
            *(a.format(**places) for a in case.argv)]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in case.codes, err
    lines = _error_lines(err)
    assert len(lines) == 1, f"expected one line, got {lines}"
    for text in case.expect:
        assert text in lines[0], lines[0]
    if out.endswith("folder.png"):
        assert (tmp_path / "folder.png" / "inside.txt").read_bytes() == SENTINEL
    elif not out.startswith("/proc"):
        assert open(out, "rb").read() == SENTINEL
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name or ".partial" in p.name]


# --- Python API -----------------------------------------------------------------------------------------------------

API_CASES = {
    "guidance-nan": (dict(guidance=math.nan), "guidance=nan"),
    "guidance-inf": (dict(guidance=math.inf), "guidance=inf"),
    "guidance-negative": (dict(guidance=-2.0), "guidance=-2.0"),
    "c-nan": (dict(c=math.nan), "c=nan"),
    "c-inf": (dict(c=math.inf), "c=inf"),
    "alpha-zero": (dict(alpha=0.0), "alpha=0.0"),
    "shift-nan": (dict(shift=math.nan), "shift=nan"),
    "guidance-trunc-nan": (dict(guidance_trunc=math.nan), "guidance_trunc=nan"),
    "guidance-trunc-2": (dict(guidance_trunc=2.0), "guidance_trunc=2.0"),
    "steps-0": (dict(steps=0), "steps=0"),
    "steps-float": (dict(steps=2.5), "steps=2.5"),
    "seed-negative": (dict(seed=-5), "seed=-5"),
    "motion-nan": (dict(motion=math.nan), "motion=nan"),
    "frames-6": (dict(frames=6), "frames=6 is not allowed"),
    "height-30": (dict(height=30), "height=30 is not allowed"),
    "width-0": (dict(width=0), "width=0 is not allowed"),
    "sampler-triton-on-cpu": (dict(sampler="triton"), "sampler='triton' is not available on cpu"),
    "sampler-unknown": (dict(sampler="fast"), "sampler='fast'"),
}


@pytest.mark.parametrize("bad,message", API_CASES.values(), ids=API_CASES.keys())
def test_api_bad_input(tiny_model, bad, message):
    steps_run = []
    args = {**dict(height=32, width=32, frames=1, steps=2, seed=0, callback=steps_run.append), **bad}
    with pytest.raises(InputError) as exc:
        generate(tiny_model, "a red fox", **args)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert steps_run == [], "no sampling step may run before the inputs are checked"


def test_api_refuses_a_run_that_cannot_fit(tiny_model, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 << 20)
    steps_run = []
    with pytest.raises(InputError, match=r"needs about .* GiB .* 0\.1 GiB of RAM available: use fewer frames"):
        generate(tiny_model, "a red fox", height=512, width=512, frames=49, steps=2, callback=steps_run.append)
    assert steps_run == []


API_IMAGE_CASES = {   # ursa_core.load_image, the reader behind --image
    "20000x20000": ("huge", ("20000x20000", "8192x8192")),
    "header-over-the-limit": ("big_header", ("9000x9000",)),
    "truncated-data": ("truncated", ("truncated.png",)),
    "empty-file": ("empty", ("empty.png", "not an image")),
    "text-file": ("not_an_image", ("not_an_image.png", "not an image")),
}


@pytest.mark.parametrize("place,expect", API_IMAGE_CASES.values(), ids=API_IMAGE_CASES.keys())
def test_api_bad_image(cli_places, place, expect):
    with pytest.raises(InputError) as exc:
        load_image(cli_places[place])
    assert "\n" not in str(exc.value) and all(text in str(exc.value) for text in expect), str(exc.value)


API_LOAD_CASES = {
    "dtype-fp8": (dict(dtype="fp8"), InputError, "dtype='fp8' is not allowed"),
    "rope-theta-abc": (dict(folder="bad_rope"), CheckpointError, "'rope_theta' must be a number, found 'abc'"),
    "spatial-stride-eight": (dict(folder="bad_stride"), CheckpointError,
                             "'spatial_stride' must be an integer, found 'eight'"),
}


@pytest.mark.parametrize("bad,kind,message", API_LOAD_CASES.values(), ids=API_LOAD_CASES.keys())
def test_api_bad_load(cli_places, bad, kind, message):
    folder = cli_places[bad.get("folder", "model")]
    with pytest.raises(kind) as exc:
        load_model(folder, dtype=bad.get("dtype", "fp32"))
    assert message in str(exc.value) and "\n" not in str(exc.value)


# --- nodes ----------------------------------------------------------------------------------------------------------

LINK = ["1", 0]
GOOD = {
    "sampler": {"model": LINK, "conditioning": LINK, "seed": 0, "steps": 2, "cfg": 7.0, "guidance_trunc": 0.9,
                "frames": 1, "width": 32, "height": 32, "c": 0.0, "alpha": 0.0, "shift": 0.0},
    "extend": {"model": LINK, "conditioning": LINK, "tokens": LINK, "windows": 1, "window_frames": 5, "overlap": 1,
               "seed": 0, "steps": 1, "cfg": 3.0, "guidance_trunc": 0.9, "carry_start": 1.0},
    "schedule": {"mode": "text-to-video", "frames": 5, "start_time": 1.0, "given_frames": 1, "keyframes": ""},
    "encode": {"vq": LINK, "image": LINK, "width": 32, "height": 32, "resize_mode": "crop"},
    "text": {"model": LINK, "prompt": "a red fox", "negative_prompt": "", "motion_score": 9.0},
    "loader": {"model_name": "URSA-tiny", "dtype": "fp32", "attention": "auto"},
}
NODE_CLASSES = {"sampler": ("nodes_sampler", "URSASampler"), "extend": ("nodes_extend", "URSAExtendVideo"),
                "schedule": ("nodes_schedule", "URSAFrameSchedule"),
                "encode": ("nodes_tokenizer", "URSATokenizerEncode"), "text": ("nodes_text", "URSATextEncode"),
                "loader": ("nodes_loader", "URSAModelLoader")}

# One bad value each: ComfyUI must report it ONCE, on the input it is about (the widget the frontend marks red).
# Rules core checks (ranges, NaN through NanRefusingBound, combo options) give core's message.
NODE_VALIDATION_CASES = {
    "sampler-frames-6": ("sampler", dict(frames=6), "frames=6 is not allowed"),
    "sampler-frames-4001": ("sampler", dict(frames=4001), "frames=4001 is not allowed"),
    "sampler-height-99999": ("sampler", dict(height=99999), "Value 99999 bigger than max of 4096"),
    "sampler-steps-negative": ("sampler", dict(steps=-1), "Value -1 smaller than min of 0"),   # 0: the model's
    "sampler-cfg-nan": ("sampler", dict(cfg=math.nan), "Value nan smaller than min"),
    "sampler-guidance-trunc-nan": ("sampler", dict(guidance_trunc=math.nan), "Value nan smaller than min"),
    "sampler-c-nan": ("sampler", dict(c=math.nan), "Value nan smaller than min"),
    "sampler-alpha-negative": ("sampler", dict(alpha=-1.0), "Value -1.0 smaller than min of 0.0"),
    "sampler-shift-inf": ("sampler", dict(shift=math.inf), "Value inf bigger than max"),
    "extend-window-frames-3": ("extend", dict(window_frames=3), "window_frames=3 is not allowed: use a video"),
    "extend-window-frames-1": ("extend", dict(window_frames=1), "window_frames=1 is not allowed: use a video"),
    "extend-carry-start-nan": ("extend", dict(carry_start=math.nan), "Value nan smaller than min"),
    "extend-cfg-nan": ("extend", dict(cfg=math.nan), "Value nan smaller than min"),
    "schedule-frames-8": ("schedule", dict(frames=8), "frames=8 is not allowed"),
    "schedule-start-time-nan": ("schedule", dict(start_time=math.nan), "Value nan smaller than min"),
    "schedule-start-time-1.5": ("schedule", dict(start_time=1.5), "Value 1.5 bigger than max of 1.0"),
    "schedule-mode-zoom": ("schedule", dict(mode="zoom"), "mode: 'zoom' not in"),
    "encode-height-0": ("encode", dict(height=0), "Value 0 smaller than min of 8"),
    "encode-width-8192": ("encode", dict(width=8192), "Value 8192 bigger than max of 4096"),
    "text-motion-nan": ("text", dict(motion_score=math.nan), "Value nan smaller than min"),
    "loader-attention-cudnn-on-cpu": ("loader", dict(attention="cudnn"), "attention: 'cudnn' not in"),
    "loader-attention-unknown": ("loader", dict(attention="xformers"), "attention: 'xformers' not in"),
    "loader-weight-dtype-int4": ("loader", dict(weight_dtype="int4"), "weight_dtype: 'int4' not in"),
    "loader-vq-device-cuda-3": ("loader", dict(vq_device="cuda:3"), "vq_device: 'cuda:3' not in"),
    "loader-blocks-on-gpu-negative": ("loader", dict(blocks_on_gpu=-1), "Value -1 smaller than min of 0"),
    "loader-model-missing": ("loader", dict(model_name="nope"), "'nope' not found"),
}


@pytest.fixture
def env(comfy, tiny_dir):
    """Fake ComfyUI with the tiny checkpoint in models/ursa/, an earlier result in output/, the node modules."""
    shutil.copytree(tiny_dir, f"{comfy.models_dir}/ursa/URSA-tiny")
    earlier = Path(comfy.output_dir) / "ursa_tokens" / "earlier_00001_.safetensors"
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_bytes(SENTINEL)
    importlib.import_module("nodes")
    comfy.node = lambda key: getattr(importlib.import_module(f"nodes.{NODE_CLASSES[key][0]}"), NODE_CLASSES[key][1])
    comfy.earlier = earlier
    return comfy


def handles(env, model):
    """URSA_MODEL / URSA_VQ for an already loaded model, wrapped as the loader node wraps them."""
    from nodes import glue
    from ursa_core.files.token_io import model_identity

    patcher = env.modules["comfy.model_patcher"].ModelPatcher
    cpu = torch.device("cpu")
    return (glue.LoadedURSA(model, patcher(model.transformer, cpu, cpu)),
            glue.LoadedVQ(model.visual_tokenizer, patcher(model.visual_tokenizer, cpu, cpu), model.geometry.fps,
                          model_identity(model)))


def good_run(env, key, model, vq):
    """The node's next good run after a refusal: it must still work."""
    cond = env.run(env.node("text"), model=model, prompt="a red fox", negative_prompt="", motion_score=9.0).result[0]
    values = {k: v for k, v in GOOD[key].items() if v is not LINK}
    links = {"sampler": dict(model=model, conditioning=cond), "text": dict(model=model),
             "extend": dict(model=model, conditioning=cond, tokens=_clip(2)),
             "encode": dict(vq=vq, image=torch.rand(1, 32, 32, 3)), "schedule": {}, "loader": {}}[key]
    return env.run(env.node(key), **values, **links).result


def _clip(latent_frames: int, side: int = 4):
    from ursa_core.files.token_io import TokenClip
    return TokenClip(torch.randint(0, 64000, (1, latent_frames, side, side)), 12.0)


@pytest.mark.parametrize("key,bad,message", NODE_VALIDATION_CASES.values(), ids=NODE_VALIDATION_CASES.keys())
def test_node_validation(env, tiny_model, key, bad, message):
    node = env.node(key)
    assert env.validate(node, GOOD[key]) == []
    errors = env.validate(node, {**GOOD[key], **bad})
    assert [e["extra_info"]["input_name"] for e in errors] == list(bad), f"not once on {list(bad)}: {errors}"
    text = f"{errors[0]['message']}: {errors[0]['details']}"
    assert message in text and "\n" not in text, text
    assert env.earlier.read_bytes() == SENTINEL
    assert good_run(env, key, *handles(env, tiny_model))


def _scheduled(side: int):
    from ursa_core.path.schedule import build_schedule
    return build_schedule("image-to-video", 2, start_tokens=torch.randint(0, 64000, (1, 1, side, side)))


# Rules only the run can tell (the checkpoint's stride, what is connected) or that tie inputs together (ComfyUI
# files a validate_inputs answer under every input it reads): checked when the node runs, before any weights move.
NODE_RUN_CASES = {
    "sampler-width-30": ("sampler", lambda: dict(width=30), "width=30 is not allowed: use a multiple of 8"),
    "sampler-given-tokens-longer": ("sampler", lambda: dict(given_tokens=_clip(3)),
                                    "given_tokens have 3 latent frames but the clip has 1"),
    "sampler-given-tokens-and-schedule-differ": ("sampler", lambda: dict(schedule=_scheduled(4),
                                                                         given_tokens=_clip(1, side=2)),
                                                 "given_tokens are 16x16 px but the Frame Schedule's tokens are "
                                                 "32x32 px: encode both at the same width and height"),
    "encode-width-30": ("encode", lambda: dict(width=30), "width=30 is not allowed: use a multiple of 8"),
    "encode-two-frames": ("encode", lambda: dict(image=torch.rand(2, 32, 32, 3)), "frames=2 is not allowed"),
    "extend-overlap-whole-window": ("extend", lambda: dict(overlap=2), "overlap=2 latent frames is not allowed"),
    "schedule-interpolation-5-frames": ("schedule", lambda: dict(mode="interpolation", frames=5,
                                                                start_tokens=_clip(1), end_tokens=_clip(1)),
                                        "frames=5 with mode='interpolation' and start_time=1 holds every latent frame"),
    "loader-blocks-negative": ("loader", lambda: dict(blocks_on_gpu=-1), "blocks_on_gpu=-1 is not allowed"),
}


@pytest.mark.parametrize("key,bad,message", NODE_RUN_CASES.values(), ids=NODE_RUN_CASES.keys())
def test_node_execute_refuses(env, tiny_model, key, bad, message):
    model, vq = handles(env, tiny_model)
    cond = env.run(env.node("text"), model=model, prompt="a red fox", negative_prompt="", motion_score=9.0).result[0]
    links = {"sampler": dict(model=model, conditioning=cond), "encode": dict(vq=vq, image=torch.rand(1, 32, 32, 3)),
             "extend": dict(model=model, conditioning=cond, tokens=_clip(2)), "schedule": {}, "loader": {}}
    values = {k: v for k, v in GOOD[key].items() if v is not LINK}
    steps_before, loads_before = len(env.progress_updates), len(env.loaded_models)
    with pytest.raises(InputError) as exc:
        env.run(env.node(key), **{**values, **links[key], **bad()})
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert len(env.progress_updates) == steps_before
    assert len(env.loaded_models) == loads_before, "refused before ComfyUI moves any weights"
    assert env.earlier.read_bytes() == SENTINEL
    assert good_run(env, key, model, vq)


def test_node_sampler_asks_comfyui_for_its_sampling_memory(env, tiny_model):
    """ComfyUI frees the estimate (ursa_core.runtime.memory) beside the weights, so the check in generate sees it
    free."""
    from ursa_core.sampling.generate import sampling_memory

    model, _ = handles(env, tiny_model)
    good_run(env, "sampler", model, None)
    required = env.load_calls[-1]["memory_required"]
    assert required == sampling_memory(tiny_model, (1, 4, 4), 1, GOOD["sampler"]["cfg"]).total > 0


def test_node_sampler_checks_the_ibq_stride(env, tiny_ibq_dir):
    """Multiples of 8 pass validation (the stride is the model's), the IBQ model's 16 is checked when it runs."""
    model, _ = handles(env, load_model(tiny_ibq_dir, dtype="fp32"))
    cond = env.run(env.node("text"), model=model, prompt="a fox", negative_prompt="", motion_score=0.0).result[0]
    values = {**{k: v for k, v in GOOD["sampler"].items() if v is not LINK}, "width": 40}
    with pytest.raises(InputError, match="width=40 is not allowed: use a multiple of 16"):
        env.run(env.node("sampler"), model=model, conditioning=cond, **values)
    assert env.run(env.node("sampler"), model=model, conditioning=cond, **{**values, "width": 32}).result


def test_node_load_tokens_refuses_paths_outside_input_and_output(env):
    base = env.state.base_dir
    secret = Path(base).parent / "outside" / "secret.safetensors"  # what input/../../outside names
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(SENTINEL)
    node = importlib.import_module("nodes.nodes_tokens_io").URSALoadTokens
    name = "../../outside/secret.safetensors"
    errors = env.validate(node, {"token_file": name})
    assert errors and all(base not in e["details"] for e in errors), errors
    with pytest.raises(Exception) as exc:
        env.run(node, token_file=name)
    assert base not in str(exc.value)


def test_node_ibq_tokens_do_not_decode_through_an_fsq_model(env, tiny_model, tiny_ibq_dir):
    """A token file carries its tokenizer: IBQ tokens decoded by the FSQ model are refused, naming both."""
    ibq, _ = handles(env, load_model(tiny_ibq_dir, dtype="fp32"))
    _, fsq_vq = handles(env, tiny_model)
    cond = env.run(env.node("text"), model=ibq, prompt="a fox", negative_prompt="", motion_score=0.0).result[0]
    values = {k: v for k, v in GOOD["sampler"].items() if v is not LINK}
    clip = env.run(env.node("sampler"), model=ibq, conditioning=cond, **values).result[0]
    tio = importlib.import_module("nodes.nodes_tokens_io")
    env.run(tio.URSASaveTokens, hidden={"prompt": {}}, tokens=clip, filename_prefix="ursa_tokens/ibq")
    loaded = env.run(tio.URSALoadTokens, token_file="ursa_tokens/ibq_00001_.safetensors [output]").result[0]
    decode = importlib.import_module("nodes.nodes_tokenizer").URSATokenizerDecode
    with pytest.raises(URSAError) as exc:
        env.run(decode, vq=fsq_vq, tokens=loaded)
    message = str(exc.value).lower()
    assert "ibq" in message and "fsq" in message and "\n" not in message


# --- prompts that are cut are reported --------------------------------------------------------------------------------

LONG_PROMPT = " ".join(["a red fox runs through the snow"] * 20)


def test_long_prompt_is_reported_by_the_api(tiny_model, caplog):
    with caplog.at_level("WARNING"):
        generate(tiny_model, LONG_PROMPT, height=32, width=32, steps=1)
    warnings = [r.getMessage() for r in caplog.records if "max_prompt_length" in r.getMessage()]
    assert len(warnings) == 1 and "at most 24" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING"):
        generate(tiny_model, "a red fox", height=32, width=32, steps=1)
    assert not [r for r in caplog.records if "max_prompt_length" in r.getMessage()]


def test_long_prompt_is_a_warning_line_on_the_cli(cli_places, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(["generate", "--model", cli_places["model"], "--prompt", LONG_PROMPT, "--steps", "1",
                     "--out", str(out)]) == 0
    lines = [line for line in _error_lines(capsys.readouterr().err) if "max_prompt_length" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: the prompt is") and out.is_file()


def test_long_prompt_is_logged_by_the_text_node(env, tiny_model, caplog):
    model, _ = handles(env, tiny_model)
    with caplog.at_level("WARNING"):
        env.run(env.node("text"), model=model, prompt=LONG_PROMPT, negative_prompt="", motion_score=9.0)
    assert [r for r in caplog.records if "max_prompt_length" in r.getMessage()]


def test_the_table_has_at_least_40_cases():
    tables = (CLI_CASES, API_CASES, API_IMAGE_CASES, API_LOAD_CASES, NODE_VALIDATION_CASES, NODE_RUN_CASES)
    assert sum(map(len, tables)) >= 40


def test_node_widgets_read_the_rules(env):
    """A rule changes in one line: the widgets' limits are ursa_core.rules' values, not copies."""
    from ursa_core import rules

    sampler = env.node("sampler").GET_SCHEMA()
    assert sampler.input_by_id("frames").max == rules.MAX_FRAMES
    assert sampler.input_by_id("steps").max == rules.MAX_STEPS
    assert (sampler.input_by_id("cfg").min, sampler.input_by_id("cfg").max) == rules.GUIDANCE_RANGE
    assert sampler.input_by_id("seed").max == rules.SEED_MAX
    assert sampler.input_by_id("width").max == rules.MAX_SIZE
    assert sampler.input_by_id("width").step == rules.MIN_SIZE_STRIDE
    assert env.node("extend").GET_SCHEMA().input_by_id("window_frames").max == rules.MAX_FRAMES
    assert env.node("loader").GET_SCHEMA().input_by_id("dtype").options == list(rules.DTYPES)
    assert env.node("text").GET_SCHEMA().input_by_id("motion_score").max == rules.MOTION_RANGE[1]
