"""In-process device split (ursa_core.parallel.devices): one guided clip with its two branches on two weight copies,
against the single path, in one process (as ComfyUI runs it).

Full-size FSQ320 random weights in bf16 (no download), 49x320x512, guidance 7, few steps for a quick ratio (the
per-step ratio is what matters; the first step is a skipped no-op). Per mode: seconds per clip, median executed
step, ratio to `single`, peak memory per device and whether the tokens equal the single path's. Modes:

- single: one copy on cuda:0, both branches in one batch (the default path).
- split_one_gpu_threads / split_one_gpu_inline: a second copy on cuda:0 runs the unconditional branch, launched
  from a thread of its own or after the conditional branch from the same thread (issue 20's one-GPU check:
  identical tokens, <= 1.1x single).
- split_two_gpus_threads / split_two_gpus_inline (2+ GPUs): the second copy on cuda:1 (issue 21: <= 0.58x).
- samples_two_gpus (2+ GPUs): two samples, one per GPU at once, against the two one after the other on cuda:0.

`launches` counts what one forward dispatches at this size (ATen calls on the meta device, views apart): the
reason the split launches the second branch from its own thread (ursa_core/parallel/devices.py).

    python benchmarks/bench_split.py --out split.json             # ~2 minutes on one H100; more modes on 2 GPUs
    python benchmarks/bench_split.py --quick --out q.json         # CPU smoke test (tiny fp32 model, copies on cpu)
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_model import FSQ320, random_model, random_prompt_ids  # noqa: E402

from ursa_core.files.atomic import atomic_file  # noqa: E402
from ursa_core.attention import backends as attention  # noqa: E402
from ursa_core.model.modeling_ursa import URSATransformer  # noqa: E402
from ursa_core.parallel.devices import BranchSplit, generate_samples  # noqa: E402
from ursa_core.sampling.generate import generate  # noqa: E402
from ursa_core.sampling.settings import GenerationSettings  # noqa: E402

CLIP = dict(frames=49, height=320, width=512, steps=8)
QUICK_CLIP = dict(frames=9, height=64, width=64, steps=4)
VIEWS = {"view", "_unsafe_view", "t", "expand", "transpose", "unsqueeze", "split", "alias", "slice", "select",
         "as_strided", "permute", "unflatten", "reshape", "detach"}


class _Dispatched(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        self.views += func.overloadpacket.__name__ in VIEWS
        return func(*args, **(kwargs or {}))


def count_launches(frames: int, height: int, width: int) -> dict:
    """ATen calls of one eager forward (one branch) of the 1.7B stack at this size, on the meta device (no memory,
    no GPU). Calls that are not views launch a kernel each on a GPU (attention counts as its math decomposition
    here, a few calls a layer, one or two kernels there)."""
    with torch.device("meta"):
        transformer = URSATransformer(FSQ320).to(torch.bfloat16)
    latent = (1 + (frames - 1) // 4, height // 8, width // 8)
    cos, sin = transformer.rotary_tables(latent)
    rows = FSQ320.max_prompt_length + 1 + latent[0] * latent[1] * latent[2]
    ids = torch.zeros(1, rows, dtype=torch.long, device="meta")
    keep = torch.arange(FSQ320.max_prompt_length, rows - 1, device="meta")
    with torch.no_grad(), _Dispatched() as seen:
        transformer.hidden_states(ids, cos, sin, keep)
    return {"aten_calls": seen.calls, "views": seen.views, "launching_calls": seen.calls - seen.views,
            "layers": FSQ320.num_hidden_layers}


def sync(devices) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def copy_to(model, device: torch.device):
    """A handle with a weight copy of its own on `device` (what URSA Devices gives each listed device)."""
    return dataclasses.replace(model, transformer=copy.deepcopy(model.transformer).to(device))


def timed(run, devices) -> dict:
    """Run `run(on_step)` once: total, median executed step, peak memory per device, its result."""
    ends: list[tuple[float, bool]] = []

    def on_step(*event) -> None:
        ends.append((time.perf_counter(), event[-1].predicted is not None))  # None: a skipped no-op step
    for device in devices:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    sync(devices)
    began = time.perf_counter()
    result = run(on_step)
    sync(devices)
    total = time.perf_counter() - began
    times = [end for end, _ in ends]
    executed = [b - a for a, b, (_, ran) in zip([began, *times], times, ends) if ran]
    peaks = {str(d): round(torch.cuda.max_memory_allocated(d) / 2 ** 30, 2) for d in dict.fromkeys(devices)
             if d.type == "cuda"}
    return {"total_s": round(total, 3), "median_step_s": round(statistics.median(executed), 4) if executed else None,
            "peak_gib": peaks, "result": result}


def clip_modes(model, ids, settings, devices: list[torch.device]) -> dict:
    """single and each split of one clip, every one warmed up with 2 steps first."""
    first = devices[0]
    seconds = {"one_gpu": first, "two_gpus": devices[1] if len(devices) > 1 else None}
    modes = {"single": (None, [first])}
    copies = {}
    for where, device in seconds.items():
        if device is None:
            continue
        copies[where] = copy_to(model, device)
        for launch in ("threads", "inline"):
            modes[f"split_{where}_{launch}"] = (BranchSplit(copies[where], launch), [first, device])
    results = {}
    for name, (split, used) in modes.items():
        def run(on_step, split=split, steps=None):
            changes = {} if steps is None else {"steps": steps}
            return generate(model, prompt_ids=ids, settings=settings, parallel=split, callback=on_step,
                            **changes).tokens
        run(lambda info: None, steps=2)
        results[name] = timed(run, used)
        print(name, {k: v for k, v in results[name].items() if k != "result"}, flush=True)
    del copies
    return results


def samples_mode(model, ids, settings, devices: list[torch.device]) -> dict:
    """Two samples: one per GPU at once, against both on the first GPU one after the other."""
    handles = [model, copy_to(model, devices[1])]
    generate_samples(handles, 2, dataclasses.replace(settings, steps=2), strategy="samples", prompt_ids=ids)
    spread = timed(lambda on_step: generate_samples(handles, 2, settings, strategy="samples", prompt_ids=ids,
                                                    callback=on_step), devices[:2])
    alone = timed(lambda on_step: generate_samples(handles[:1], 2, settings, prompt_ids=ids, callback=on_step),
                  devices[:1])
    equal = all(torch.equal(a.tokens, b.tokens) for a, b in zip(spread["result"], alone["result"]))
    return {"two_gpus_s": spread["total_s"], "one_gpu_s": alone["total_s"],
            "ratio": round(spread["total_s"] / alone["total_s"], 3), "tokens_equal": equal,
            "peak_gib": spread["peak_gib"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--steps", type=int, help=f"sampling steps per clip (default {CLIP['steps']}; --quick "
                                                  f"{QUICK_CLIP['steps']})")
    parser.add_argument("--attention", default="auto", help="attention backend of both copies (default: auto)")
    parser.add_argument("--quick", action="store_true", help="tiny fp32 model, both copies on the CPU")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quick = args.quick or not torch.cuda.is_available()
    devices = [torch.device("cpu")] * 2 if quick else [torch.device(f"cuda:{i}")
                                                      for i in range(torch.cuda.device_count())]
    clip = dict(QUICK_CLIP if quick else CLIP)
    if args.steps is not None:
        clip["steps"] = args.steps
    model = random_model("tiny" if quick else "fsq", devices[0], torch.float32 if quick else torch.bfloat16)
    model.transformer.set_attention(attention.resolve(args.attention, devices[0]))
    settings, ids = GenerationSettings(guidance=7.0, **clip), random_prompt_ids(model.config)
    report = {"device": "cpu" if quick else torch.cuda.get_device_name(devices[0]), "gpus": len(devices),
              "attention": model.transformer.attn_implementation, "clip": clip, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
              "launches": count_launches(CLIP["frames"], CLIP["height"], CLIP["width"])}
    print("launches", report["launches"], flush=True)
    modes = clip_modes(model, ids, settings, devices[:1] if quick else devices)
    single = modes["single"]["result"]
    for name, result in modes.items():
        tokens = result.pop("result")
        result["tokens_equal_to_single"] = float((tokens == single).float().mean())
        result["ratio_to_single"] = round(result["total_s"] / modes["single"]["total_s"], 3)
    report["modes"] = modes
    if quick or len(devices) > 1:
        report["samples_two_devices"] = samples_mode(model, ids, settings, devices)
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
