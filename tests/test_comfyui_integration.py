"""Opt-in: boot a real ComfyUI headless on the CPU, load this plugin, run every API workflow on a tiny checkpoint.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfy-venv/bin/python \
        python -m pytest -q tests/test_comfyui_integration.py -s

Skipped unless COMFYUI_DIR is set. COMFYUI_PYTHON (default: this interpreter) must have ComfyUI's requirements and
the plugin's (transformers, tokenizers, safetensors, av). The server gets its own BASE folder
(custom_nodes/ursa_video -> this repo, models/ursa/URSA-1.7B-FSQ320 = `python -m ursa_core make-tiny`), so the
ComfyUI tree is never written to. Workflows are overridden by node title through scripts/comfy_queue.py.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR (and COMFYUI_PYTHON) to run against a "
                                                        "real ComfyUI")

sys.path.insert(0, str(ROOT / "scripts"))
import comfy_queue  # noqa: E402  (stdlib-only client of this repo)
import make_workflows  # noqa: E402

API_DIR = make_workflows.OUT_DIR / "api"

URSA_NODES = {"URSAModelLoader", "URSALoraLoader", "URSADevices", "URSATextEncode", "URSATokenizerEncode",
              "URSATokenizerDecode", "URSAFrameSchedule", "URSASampler", "URSAExtendVideo", "URSASaveTokens",
              "URSALoadTokens", "URSAMaskSchedule", "URSAPadForOutpaint", "URSARepaintComposite"}
PLUGIN_DIR_NAME = "ursa_video"
MODEL_NAME = "URSA-1.7B-FSQ320"
IMAGE_MODEL_NAME = make_workflows.IMAGE_MODEL_NAME  # the inpainting template's (a tiny IBQ checkpoint here)
TINY = ["URSA Sampler.width=64", "URSA Sampler.height=64", "URSA Sampler.steps=2"]
ENCODE = ["URSA Encode Start.width=64", "URSA Encode Start.height=64", "Start Image.image=ursa_start.png"]
# per workflow: (overrides, expected frames per output file, expected (width, height))
CASES = {
    "ursa_t2i": (TINY + ["URSA Sampler.frames=1"], 1, (64, 64)),
    "ursa_t2v": (TINY + ["URSA Sampler.frames=5"], 5, (64, 64)),
    "ursa_i2v": (TINY + ENCODE + ["URSA Sampler.frames=5", "URSA Frame Schedule.frames=5"], 5, (64, 64)),
    # 9 frames = 3 latent frames: first and last given, the middle one generated (5 would leave nothing to do);
    # the end frame is the start image mirrored (the template's own end frame)
    "ursa_interpolation": (TINY + ENCODE + ["URSA Sampler.frames=9", "URSA Frame Schedule.frames=9",
                                            "URSA Encode End.width=64", "URSA Encode End.height=64"], 9, (64, 64)),
    "ursa_long_video": (TINY + ["URSA Sampler.frames=5", "URSA Extend Video.windows=1",
                                "URSA Extend Video.window_frames=5", "URSA Extend Video.overlap=1",
                                "URSA Extend Video.steps=2"], 9, (64, 64)),
    "ursa_upscale_chain": (TINY + ["URSA Sampler.frames=5"], 5, (128, 128)),
    # Paint with a mask: the inputs prepare_base writes; the canvas (encode node, saved tokens) sets the clip.
    "ursa_inpaint_image": (["URSA Encode Image.width=64", "URSA Encode Image.height=64", "URSA Sampler.steps=2",
                            "Image and Mask.image=ursa_inpaint.png"], 1, (64, 64)),
    "ursa_outpaint_image": (["URSA Encode Canvas.width=64", "URSA Encode Canvas.height=40", "URSA Sampler.steps=2",
                             "Image.image=ursa_start.png", "URSA Pad for Outpaint.left=16",
                             "URSA Pad for Outpaint.right=16"], 1, (64, 40)),
    "ursa_inpaint_video": (["First 49 Frames.length=5", "URSA Encode Video.width=64", "URSA Encode Video.height=40",
                            "URSA Sampler.steps=2"], 5, (64, 40)),
    "ursa_reroll_region": (["Canvas (keep).width=64", "Canvas (keep).height=40", "Region (repaint).width=24",
                            "Region (repaint).height=16", "Place Region.x=16", "Place Region.y=8",
                            "URSA Sampler.steps=2"], 5, (64, 40)),
    "ursa_t2i_lora": (TINY + ["URSA Sampler.frames=1"], 1, (64, 64)),
    # the two-GPU template on this CPU server: URSA Devices lists the CPU twice (two weight copies)
    "ursa_t2v_two_gpus": (TINY + ["URSA Sampler.frames=5", "URSA Devices.devices=cpu, cpu"], 5, (64, 64)),
}
TIMINGS: dict[str, float] = {}


# ----------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path) -> None:
    """custom_nodes/ursa_video -> repo, tiny checkpoints under the workflows' model names, the repaint inputs, the
    LoRA template's adapter."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PLUGIN_DIR_NAME).symlink_to(ROOT, target_is_directory=True)
    for name, vae in ((MODEL_NAME, "fsq"), (IMAGE_MODEL_NAME, "ibq")):
        subprocess.run([sys.executable, "-m", "ursa_core", "make-tiny", str(base / "models" / "ursa" / name),
                        "--vae", vae], cwd=ROOT, check=True, capture_output=True, text=True, timeout=120)
    write_repaint_inputs(base / "input", base / "models" / "ursa" / MODEL_NAME)
    write_peft_folder(base / "models" / "ursa" / MODEL_NAME,
                      base / "models" / "loras" / Path(make_workflows.LORA_NAME).parent)


def write_repaint_inputs(folder: Path, model: Path) -> None:
    """What the paint-with-a-mask templates load, under their names: a clip (example.mp4, 9 frames 64x40), a mask
    image (example_mask.png: a white box), tokens of a tiny clip (example.safetensors, 5 frames 64x40), and a picture
    with a transparent hole (ursa_inpaint.png: LoadImage's mask is 1 - alpha)."""
    import numpy as np
    import torch
    from PIL import Image

    from ursa_core.files.media import write_mp4
    folder.mkdir(parents=True, exist_ok=True)
    write_mp4(torch.rand(9, 40, 64, 3, generator=torch.Generator().manual_seed(0)), folder / "example.mp4")
    mask = np.zeros((40, 64), np.uint8)
    mask[8:24, 16:40] = 255
    Image.fromarray(mask).save(folder / "example_mask.png")
    rgba = np.asarray(Image.open(io.BytesIO(png_bytes(2))).convert("RGBA")).copy()
    rgba[24:56, 24:72, 3] = 0
    Image.fromarray(rgba).save(folder / "ursa_inpaint.png")
    subprocess.run([sys.executable, "-m", "ursa_core", "generate", "--model", str(model), "--prompt", "a clip",
                    "--frames", "5", "--width", "64", "--height", "40", "--steps", "1", "--save-tokens",
                    str(folder / "example.safetensors"), "--out", str(folder.parent / "clip.mp4")],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=120)


def write_peft_folder(model_dir: Path, folder: Path) -> None:
    """A PEFT adapter folder for the tiny checkpoint as the LoRA template names it (config + safetensors), random."""
    import torch
    from safetensors.torch import save_file

    from ursa_core.lora.patch import projection_shapes
    from ursa_core.model.config import TransformerConfig

    config = TransformerConfig.from_json(model_dir / "transformer" / "config.json")
    gen, state = torch.Generator().manual_seed(3), {}
    for name, (out, inp) in projection_shapes(config).items():
        state[f"base_model.model.{name}.lora_A.weight"] = 0.1 * torch.randn(4, inp, generator=gen)
        state[f"base_model.model.{name}.lora_B.weight"] = 0.1 * torch.randn(out, 4, generator=gen)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 4,
                                                             "target_modules": ["q_proj", "v_proj"]}))


# ComfyUI 0.8.0 refuses `--lowvram` next to `--cpu` (argparse) and, without `--cpu`, stops at start-up on a torch
# without CUDA. So the low-VRAM server is the CPU server with the state `--lowvram` sets on a GPU machine
# (comfy.model_management.vram_state = LOW_VRAM), applied before main.py runs; everything else is stock ComfyUI.
LOWVRAM_LAUNCHER = """
import runpy, sys
sys.path.insert(0, ".")
state = sys.argv.pop(1)
sys.argv[0] = "main.py"
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_management as mm
mm.vram_state = mm.VRAMState[state]
print("URSA test launcher: vram state", mm.vram_state.name, flush=True)
runpy.run_path("main.py", run_name="__main__")
"""


def start_server(base: Path, port: int, log_path: Path, vram_state: str | None = None) -> subprocess.Popen:
    entry = ["-c", LOWVRAM_LAUNCHER, vram_state] if vram_state else [str(Path(COMFYUI_DIR) / "main.py")]
    cmd = [COMFYUI_PYTHON, *entry, "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(base),
           "--database-url", "sqlite:///:memory:"]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            status, _ = comfy_queue.http_json(url, "/system_stats", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"ComfyUI not ready after {timeout}s:\n{log_path.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def png_bytes(seed: int, size: int = 96) -> bytes:
    from PIL import Image
    img = Image.new("RGB", (size, size))
    img.putdata([((x * 5 + seed * 70) % 256, (y * 3 + seed * 40) % 256, (x + y) % 256)
                 for y in range(size) for x in range(size)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def upload_image(url: str, name: str, data: bytes) -> dict:
    """POST /upload/image (multipart/form-data, as the frontend's upload button does)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
        f"--{boundary}--\r\n").encode()
    req = urllib.request.Request(url + "/upload/image", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def queue_cli(url: str, workflow: str, sets: list[str], out_dir: Path, timeout: float = 120.0,
              extra: list[str] = ()) -> subprocess.CompletedProcess:
    """Run the repo's own client on workflows/api/<workflow>.json with --set overrides."""
    cmd = [sys.executable, str(ROOT / "scripts" / "comfy_queue.py"),
           str(API_DIR / f"{workflow}.json"), "--server", url, "--out", str(out_dir),
           "--timeout", str(timeout), "--poll", "0.2", *extra]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)


def post_prompt(url: str, workflow: str, sets: list[str]) -> tuple[int, dict]:
    graph = comfy_queue.load_workflow(str(API_DIR / f"{workflow}.json"), sets, {})
    return comfy_queue.http_json(url, "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})


def video_info(path: str) -> tuple[int, tuple[int, int]]:
    import av

    from ursa_core.files.media import count_video_frames
    with av.open(path) as container:
        stream = container.streams.video[0]
        size = (stream.width, stream.height)
    return count_video_frames(path), size


def node_id_by_title(workflow: str, title: str) -> str:
    graph = json.loads((API_DIR / f"{workflow}.json").read_text())
    return next(nid for nid, n in graph.items() if n["_meta"]["title"] == title)


# ----------------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "comfy_base")


@pytest.fixture(scope="module", params=["LOW_VRAM", "NO_VRAM"])
def lowvram_server(tmp_path_factory, request):
    """A server in the VRAM state of `--lowvram` / `--novram` (see LOWVRAM_LAUNCHER)."""
    for server_info in running_server(tmp_path_factory, f"comfy_{request.param.lower()}", request.param):
        yield {**server_info, "state": request.param}


def running_server(tmp_path_factory, name: str, vram_state: str | None = None):
    base = tmp_path_factory.mktemp(name)
    prepare_base(base)
    port, log_path = free_port(), base / "server.log"
    t0 = time.monotonic()
    proc = start_server(base, port, log_path, vram_state)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path)
        TIMINGS[f"{name} start"] = time.monotonic() - t0
        for i, name in enumerate(("ursa_start.png",)):
            assert upload_image(url, name, png_bytes(i))["name"] == name
        yield {"url": url, "base": base, "log": log_path}
    finally:
        stop_server(proc)
        if TIMINGS:
            print("\n[comfyui integration] seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


# ----------------------------------------------------------------------------------------------- tests
def test_plugin_registered(server):
    log = server["log"].read_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and PLUGIN_DIR_NAME in line]
    assert not failed, failed
    status, info = comfy_queue.http_json(server["url"], "/object_info")
    assert status == 200
    assert URSA_NODES <= set(info), URSA_NODES - set(info)
    assert info["URSAModelLoader"]["input"]["required"]["model_name"][1]["options"] == [MODEL_NAME,
                                                                                   IMAGE_MODEL_NAME]
    # The workflow generator reads the node schema snapshot: it must agree with the real server.
    snapshot = make_workflows.load_specs()
    for node_id in set(snapshot) & set(info):
        assert make_workflows.normalize_info(info[node_id]) == snapshot[node_id], node_id
    status, templates = comfy_queue.http_json(server["url"], "/workflow_templates")
    assert sorted(templates.get(PLUGIN_DIR_NAME, [])) == sorted(t.title for t in make_workflows.TEMPLATES)


@pytest.mark.parametrize("workflow", list(CASES))
def test_workflow_runs(server, workflow, tmp_path):
    sets, frames, size = CASES[workflow]
    t0 = time.monotonic()
    res = queue_cli(server["url"], workflow, sets, tmp_path)
    TIMINGS[workflow] = time.monotonic() - t0
    assert res.returncode == 0, f"{workflow}:\n{res.stdout}\n{res.stderr}\n{server['log'].read_text()[-3000:]}"
    files = [line for line in res.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert files and all(os.path.getsize(f) > 0 for f in files), res.stdout
    if frames == 1:
        from PIL import Image
        # The saved picture; node previews (the Mask Schedule's token map) are temp files, downloaded too.
        pngs = [f for f in files if f.endswith(".png") and not Path(f).name.startswith("ComfyUI_temp_")]
        assert len(pngs) == 1 and Image.open(pngs[0]).size == size
    else:
        mp4s = [f for f in files if f.endswith(".mp4")]
        assert len(mp4s) == 1, files
        assert video_info(mp4s[0]) == (frames, size)
    if workflow == "ursa_long_video":
        saved = list((server["base"] / "output" / "ursa_tokens").glob("URSA_long_*.safetensors"))
        assert saved, "URSA Save Tokens wrote nothing"


def test_interrupt_stops_sampling(server, tmp_path):
    url = server["url"]
    status, body = post_prompt(url, "ursa_t2v", ["URSA Sampler.width=64", "URSA Sampler.height=64",
                                                 "URSA Sampler.frames=9", "URSA Sampler.steps=500",
                                                 "URSA Sampler.seed=7"])
    assert status == 200, body
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until it runs, then a little into sampling
        _, queue = comfy_queue.http_json(url, "/queue")
        if any(q[1] == prompt_id for q in queue.get("queue_running", [])):
            break
        time.sleep(0.1)
    time.sleep(1.5)
    t0 = time.monotonic()
    comfy_queue.http_json(url, "/interrupt", {"prompt_id": prompt_id})
    entry = comfy_queue.wait_for(url, prompt_id, timeout=60, poll=0.1)
    TIMINGS["interrupt latency"] = time.monotonic() - t0
    assert entry is not None, "no history entry after /interrupt"
    assert entry["status"]["status_str"] == "error"
    events = {event: data for event, data in entry["status"]["messages"]}
    assert "execution_interrupted" in events, events.keys()
    assert events["execution_interrupted"]["node_type"] == "URSASampler"
    assert TIMINGS["interrupt latency"] < 10
    # The server still works afterwards.
    res = queue_cli(url, "ursa_t2i", TINY + ["URSA Sampler.frames=1", "URSA Sampler.seed=8"], tmp_path)
    assert res.returncode == 0, res.stderr


def errors_by_input(body: dict, node: str) -> list[tuple[str, str]]:
    """(input name, message + details) of each validation error ComfyUI filed for `node`: the frontend lists each one
    and marks its input red."""
    return [(e.get("extra_info", {}).get("input_name"), f"{e['message']}: {e['details']}")
            for e in body["node_errors"][node]["errors"]]


def test_bad_frames_rejected_once_on_frames(server):
    status, body = post_prompt(server["url"], "ursa_t2v", TINY + ["URSA Sampler.frames=6"])
    assert status == 400, body
    sampler = node_id_by_title("ursa_t2v", "URSA Sampler")
    assert set(body["node_errors"]) == {sampler}, body["node_errors"]
    errors = errors_by_input(body, sampler)
    assert len(errors) == 1 and errors[0][0] == "frames" and "frames=6 is not allowed" in errors[0][1], errors
    print(f"\n[frames=6] {errors}")


@pytest.mark.parametrize("setting,expected", [
    ("URSA Sampler.cfg=NaN", "Value nan smaller than min of 0.0"),
    ("URSA Sampler.guidance_trunc=NaN", "Value nan smaller than min of 0.0"),
    ("URSA Sampler.guidance_trunc=Infinity", "Value inf bigger than max of 1.0"),
    ("URSA Prompt.motion_score=NaN", "Value nan smaller than min of 0.0"),
    ("URSA Loader.attention=cudnn", "attention: 'cudnn' not in"),
])
def test_bad_values_rejected_before_queueing_once_on_their_input(server, setting, expected):
    """What only a hand-written API prompt can send (NaN), and a backend this (CPU) server cannot run: HTTP 400, one
    error, on that input."""
    status, body = post_prompt(server["url"], "ursa_t2i", TINY + [setting])
    assert status == 400, body
    title, name = setting.split("=")[0].split(".")
    node = node_id_by_title("ursa_t2i", title)
    assert set(body["node_errors"]) == {node}, body["node_errors"]
    errors = errors_by_input(body, node)
    assert len(errors) == 1 and errors[0][0] == name and expected in errors[0][1], errors


def t2i_on_devices(devices: str, sets: list[str]) -> dict:
    """The ursa_t2i graph with URSA Devices between the loader and the sampler."""
    graph = comfy_queue.load_workflow(str(API_DIR / "ursa_t2i.json"), sets, {})
    loader, sampler = node_id_by_title("ursa_t2i", "URSA Loader"), node_id_by_title("ursa_t2i", "URSA Sampler")
    graph["900"] = {"inputs": {"model": [loader, 0], "devices": devices, "strategy": "auto"},
                    "class_type": "URSADevices", "_meta": {"title": "URSA Devices"}}
    graph[sampler]["inputs"]["model"] = ["900", 0]
    return graph


def run_graph(url: str, graph: dict, out_dir: Path) -> list[bytes]:
    """Queue an API graph, wait, download its image outputs; their pixels (SaveImage's PNGs also carry the graph
    as text, which differs between graphs) in output order."""
    from PIL import Image
    status, body = comfy_queue.http_json(url, "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
    assert status == 200, body
    entry = comfy_queue.wait_for(url, body["prompt_id"], timeout=120, poll=0.2)
    assert entry is not None and entry["status"]["status_str"] == "success", entry
    return [Image.open(comfy_queue.download(url, item, str(out_dir))).tobytes()
            for item in comfy_queue.collect_outputs(entry)]


def test_devices_node_batch_equals_single_runs(server, tmp_path):
    """URSA Devices with two CPU "devices" through the real server: a batch of two, one sample per device, saves the
    images of the same batch on one device, and (within the decoder's rounding of a batch of two against a batch
    of one: one level of 255) those of single runs with seed and seed + 1."""
    sets = TINY + ["URSA Sampler.frames=1", "URSA Sampler.batch_size=2", "URSA Sampler.seed=5"]
    spread = run_graph(server["url"], t2i_on_devices("cpu, cpu", sets), tmp_path / "spread")
    one_device = run_graph(server["url"], comfy_queue.load_workflow(str(API_DIR / "ursa_t2i.json"), sets, {}),
                           tmp_path / "one")
    assert len(spread) == 2 and spread == one_device
    for seed, pixels in zip((5, 6), spread):
        single = run_graph(server["url"], comfy_queue.load_workflow(
            str(API_DIR / "ursa_t2i.json"), TINY + ["URSA Sampler.frames=1", f"URSA Sampler.seed={seed}"], {}),
            tmp_path / f"single{seed}")[0]
        assert max(abs(a - b) for a, b in zip(pixels, single)) <= 1


def test_devices_node_rejects_a_device_that_does_not_exist(server):
    graph = t2i_on_devices("cpu, cuda:1", TINY)
    status, body = comfy_queue.http_json(server["url"], "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
    assert status == 400 and set(body["node_errors"]) == {"900"}, body
    message = body["node_errors"]["900"]["errors"][0]["details"]
    assert "devices='cpu, cuda:1': device='cuda:1' is not available" in message and "\n" not in message


def test_missing_model_rejected_once_with_the_download_command(server, tmp_path):
    status, body = post_prompt(server["url"], "ursa_t2i", TINY + ["URSA Loader.model_name=URSA-not-downloaded"])
    assert status == 400, body
    loader = node_id_by_title("ursa_t2i", "URSA Loader")
    assert set(body["node_errors"]) == {loader}, body["node_errors"]
    errors = errors_by_input(body, loader)
    assert len(errors) == 1 and errors[0][0] == "model_name", errors
    assert "URSA-not-downloaded" in errors[0][1]
    assert f"available: ['{MODEL_NAME}', '{IMAGE_MODEL_NAME}']" in errors[0][1]
    assert "hf download BAAI/URSA-1.7B-FSQ320 --local-dir" in errors[0][1]  # also when another model exists
    print(f"\n[missing model] {errors[0]}")
    # The client reports the same rejection with exit code 2 and names the node by title.
    res = queue_cli(server["url"], "ursa_t2i", ["URSA Loader.model_name=URSA-not-downloaded"], tmp_path)
    assert res.returncode == 2 and "URSA Loader" in res.stderr, res.stderr


def test_half_downloaded_model_listed_and_named_with_its_completion(server):
    import shutil

    # a released model's folder name: the completion command names its repository (never a made-up one)
    half = server["base"] / "models" / "ursa" / "URSA-1.7B-IBQ512"
    shutil.copytree(server["base"] / "models" / "ursa" / MODEL_NAME, half)
    shutil.rmtree(half / "tokenizer")
    try:
        _, info = comfy_queue.http_json(server["url"], "/object_info/URSAModelLoader")
        listed = info["URSAModelLoader"]["input"]["required"]["model_name"][1]["options"]
        assert listed == [MODEL_NAME, IMAGE_MODEL_NAME, half.name]
        status, body = post_prompt(server["url"], "ursa_t2i", TINY + [f"URSA Loader.model_name={half.name}"])
        assert status == 400, body
        errors = errors_by_input(body, node_id_by_title("ursa_t2i", "URSA Loader"))
        assert len(errors) == 1 and errors[0][0] == "model_name", errors
        assert "is incomplete" in errors[0][1] and "missing tokenizer/" in errors[0][1]
        assert f"hf download BAAI/{half.name} --local-dir {half}" in errors[0][1], errors
    finally:
        shutil.rmtree(half)


def test_token_loader_stays_inside_input_and_output(server):
    """A real server refuses token names outside input/ and output/ with the same 400 whether or not the file
    exists, showing no path of the machine; a file in input/ is accepted."""
    import torch

    from ursa_core.files.token_io import save_tokens

    base, zeros = server["base"], torch.zeros(1, 1, 4, 4, dtype=torch.long)
    secret = save_tokens(zeros, base.parent / f"{base.name}_outside" / "secret.safetensors")
    save_tokens(zeros, base / "input" / "mine.safetensors")
    answers = set()
    for name in (f"../../{secret.parent.name}/secret.safetensors", f"../../{secret.parent.name}/nope.safetensors",
                 str(secret), "mine.safetensors"):
        graph = {"1": {"class_type": "URSALoadTokens", "inputs": {"token_file": name}},
                 "2": {"class_type": "URSASaveTokens", "inputs": {"tokens": ["1", 0], "filename_prefix": "t/x"}}}
        status, body = comfy_queue.http_json(server["url"], "/prompt", {"prompt": graph, "client_id": "t"})
        if name == "mine.safetensors":
            assert status == 200, body
            assert comfy_queue.wait_for(server["url"], body["prompt_id"], timeout=60, poll=0.1) is not None
            continue
        assert status == 400 and set(body["node_errors"]) == {"1"}, body
        text = json.dumps(body["node_errors"]).replace(json.dumps(name)[1:-1], "NAME")
        assert str(base.parent) not in text, text
        answers.add(text)
    assert len(answers) == 1, answers


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_help_pages_locales_and_model_library(server):
    url = server["url"]
    for locale in ("en", "zh"):  # the frontend's first request for a custom node's help page
        status, body = http_get(f"{url}/extensions/{PLUGIN_DIR_NAME}/docs/URSAModelLoader/{locale}.md")
        assert status == 200 and b"`blocks_on_gpu`" in body, (locale, status)
    _, i18n = comfy_queue.http_json(url, "/i18n")
    assert i18n["zh"]["nodeDefs"]["URSAModelLoader"]["inputs"]["low_vram"]["tooltip"]
    # The model library lists registered folders' weight files; URSA checkpoints are folders, so no `ursa` entry.
    _, folders = comfy_queue.http_json(url, "/experiment/models")
    assert "ursa" not in [f["name"] for f in folders]


# options -> the block-swap line the loader logs under (LOW_VRAM, NO_VRAM); None = no streaming
LOADER_OPTIONS = {
    "stream 1 block + fp8 + tokenizer on cpu": (
        ["URSA Loader.low_vram=stream", "URSA Loader.blocks_on_gpu=1", "URSA Loader.weight_dtype=fp8_e4m3fn",
         "URSA Loader.vq_device=cpu", "URSA Loader.text_device=cpu"],
        ("1 decoder layers stay on cpu, 1 stream from RAM (low_vram=stream)",) * 2),
    # like core under --lowvram: the tiny model fits in the free memory, so all of it stays; --novram streams all
    "auto + fp8_e5m2": (["URSA Loader.low_vram=auto", "URSA Loader.weight_dtype=fp8_e5m2"],
                        (None, "0 decoder layers stay on cpu, 2 stream from RAM (low_vram=auto)")),
}


@pytest.mark.parametrize("workflow", ["ursa_t2i", "ursa_t2v"])
@pytest.mark.parametrize("options", list(LOADER_OPTIONS))
def test_lowvram_server_runs_with_loader_options(lowvram_server, workflow, options, tmp_path):
    sets, frames, size = CASES[workflow]
    overrides, expected_lines = LOADER_OPTIONS[options]
    seen = len(lowvram_server["log"].read_text())
    t0 = time.monotonic()
    res = queue_cli(lowvram_server["url"], workflow, sets + overrides + [f"URSA Sampler.seed={len(options)}"],
                    tmp_path)
    TIMINGS[f"{lowvram_server['state']} {workflow} {options}"] = time.monotonic() - t0
    log = lowvram_server["log"].read_text()
    assert res.returncode == 0, f"{workflow}:\n{res.stdout}\n{res.stderr}\n{log[-3000:]}"
    files = [line for line in res.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert files and all(os.path.getsize(f) > 0 for f in files), res.stdout
    assert f"URSA test launcher: vram state {lowvram_server['state']}" in log
    new_lines = log[seen:]
    expected = expected_lines[lowvram_server["state"] == "NO_VRAM"]
    if workflow == "ursa_t2i":  # the loader runs once per server and options (t2v reuses the cached model)
        assert (expected in new_lines) if expected else ("stream from RAM" not in new_lines), new_lines[-2000:]


def test_lowvram_server_rejects_bad_loader_options(lowvram_server):
    """A bad loader option is refused before the prompt runs (HTTP 400), once, on the widget it is about."""
    status, body = post_prompt(lowvram_server["url"], "ursa_t2i", TINY + ["URSA Loader.low_vram=stream",
                                                                          "URSA Loader.blocks_on_gpu=-1"])
    assert status == 400, body
    loader = node_id_by_title("ursa_t2i", "URSA Loader")
    errors = body["node_errors"][loader]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["blocks_on_gpu"], errors  # once, on its widget
