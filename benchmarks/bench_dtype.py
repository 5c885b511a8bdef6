"""fp16 or bf16 as URSA's compute dtype: speed of a guided step, and each layer's error against fp32.

Full-size random weights (no download). Speed: the median guided sampling step (both CFG branches, the head and the
jump) at 49x320x512 and 13x320x512, fp16 and bf16, same attention backend. Accuracy: every decoder layer of the
1.7B shape (on a 49-frame sequence) and of the tiny shape (on a small clip) is fed the fp32 stack's input to that
layer, cast to fp16 / bf16, and its output compared with the fp32 layer's (relative RMS, and how many values are not
finite); the head likewise. With random weights errors compound chaotically across layers, so only per-layer errors
judge a dtype, and trained weights may hold larger activations than random ones (fp16's range is the risk that
random weights cannot show).

    python benchmarks/bench_dtype.py --out dtype.json      # one H100: about two minutes
    python benchmarks/bench_dtype.py --quick --out q.json  # CPU smoke test: tiny shape only
    python benchmarks/bench_dtype.py --errors-only --out e.json   # the per-layer errors alone (~1 minute)
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_model import FSQ320, TINY, random_model, random_prompt_ids, random_transformer  # noqa: E402

from ursa_core.attention.backends import resolve as resolve_attention  # noqa: E402
from ursa_core.files.atomic import atomic_file  # noqa: E402
from ursa_core.sampling.generate import generate  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SPEED_CLIPS = {"49x320x512": (49, 320, 512), "13x320x512": (13, 320, 512)}
QUICK_CLIPS = {"1x32x32": (1, 32, 32)}
FULL_LATENTS = (13, 40, 64)    # 49x320x512 through the FSQ tokenizer (4x8x8)
TINY_LATENTS = (2, 8, 8)       # 5x64x64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def guided_step_seconds(model, clip: tuple[int, int, int], steps: int = 5) -> dict:
    """Median seconds of the guided, non-final steps of a short run (step 0 warms up, the last only draws x1)."""
    device = model.device
    ends: list[float] = []

    def on_step(info) -> None:
        sync(device)
        ends.append(time.perf_counter())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    frames, height, width = clip
    sync(device)
    start = time.perf_counter()
    generate(model, prompt_ids=random_prompt_ids(model.config), frames=frames, height=height, width=width,
             steps=steps, guidance=7.0, guidance_trunc=1.0, skip_noop_steps=False, callback=on_step)
    times = [b - a for a, b in zip([start, *ends], ends)][1:-1]
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0
    return {"guided_step_s": statistics.median(times), "step_s": [round(t, 4) for t in times], "peak_gib": peak}


def speed_section(kind: str, clips: dict, device: torch.device) -> dict:
    result: dict = {name: {} for name in clips}
    for dtype_name, dtype in DTYPES.items():
        model = random_model(kind, device, dtype)
        model.transformer.set_attention(resolve_attention("auto", device))  # the kernel a user gets by default
        result.setdefault("attention", model.transformer.attn_implementation)
        for name, clip in clips.items():
            result[name][dtype_name] = guided_step_seconds(model, clip)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name in clips:
        result[name]["fp16_over_bf16"] = result[name]["fp16"]["guided_step_s"] / result[name]["bf16"]["guided_step_s"]
    return result


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm())


def compare(module, inputs_32: tuple, ref: torch.Tensor, errors: dict) -> None:
    """`module`'s output on `inputs_32` cast to each dtype, against `ref` (the fp32 module's output)."""
    for name, dtype in DTYPES.items():
        low = copy.deepcopy(module).to(dtype)
        out = low(*(x.to(dtype) if x.is_floating_point() else x for x in inputs_32))
        errors[name]["rel_rms"].append(rel_rms(out, ref))
        errors[name]["nonfinite"] += int((~torch.isfinite(out)).sum())
        del low, out


@torch.no_grad()
def layer_errors(config, latent_shape: tuple[int, int, int], device: torch.device) -> dict:
    """Per-layer relative RMS of fp16 and bf16 against fp32, every layer fed the fp32 stack's own input."""
    ref = random_transformer(config, device, torch.float32)
    # fp32 SDPA with grouped KV heads falls back to the math kernel (scores in memory: ~70 GiB at 49 frames); the
    # memory-efficient kernel takes all three dtypes, so every dtype is judged through the same kernel family.
    ref.set_attention("efficient" if device.type == "cuda" else "sdpa")
    gen = torch.Generator().manual_seed(1)
    visual = torch.randint(0, config.lm_head_size, (1, latent_shape[0] * latent_shape[1] * latent_shape[2]),
                           generator=gen) + config.lm_vocab_size
    bov = torch.full((1, 1), config.bov_token_id)
    ids = torch.cat([random_prompt_ids(config)[0], bov, visual], 1).to(device)
    cos, sin = ref.rotary_tables(latent_shape)
    x = ref.model.embed_tokens(ids)
    errors = {name: {"rel_rms": [], "nonfinite": 0} for name in DTYPES}
    for layer in ref.model.layers:
        y = layer(x, cos, sin)
        compare(_LayerWithTables(layer, cos, sin), (x,), y, errors)
        x = y
    normed = ref.model.norm(x[:, -visual.shape[1]:])
    head = {name: {"rel_rms": [], "nonfinite": 0} for name in DTYPES}
    compare(ref.lm_head, (normed,), ref.lm_head(normed), head)
    return {name: {"layer_rel_rms": [round(e, 6) for e in errors[name]["rel_rms"]],
                   "layer_rel_rms_mean": statistics.mean(errors[name]["rel_rms"]),
                   "layer_rel_rms_max": max(errors[name]["rel_rms"]), "nonfinite": errors[name]["nonfinite"],
                   "head_rel_rms": head[name]["rel_rms"][0], "head_nonfinite": head[name]["nonfinite"]}
            for name in DTYPES}


class _LayerWithTables(torch.nn.Module):
    """One decoder layer with the rotary tables in its own dtype (cast along with it)."""

    def __init__(self, layer, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, self.cos, self.sin)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the report (JSON) here")
    parser.add_argument("--quick", action="store_true", help="tiny shape on the CPU (smoke test of this script)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--errors-only", action="store_true", help="per-layer errors only (no speed section)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    began = time.perf_counter()
    report = {"command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "weights": "random (benchmarks/random_model.py)"}
    if not args.errors_only:
        report["speed"] = speed_section("tiny" if args.quick else "fsq", QUICK_CLIPS if args.quick else SPEED_CLIPS,
                                        device)
        print("speed", json.dumps(report["speed"]), flush=True)
    report["layer_error"] = {"tiny_5x64x64": layer_errors(TINY, TINY_LATENTS, device)}
    if not args.quick:
        report["layer_error"]["full_49x320x512"] = layer_errors(FSQ320, FULL_LATENTS, device)
    print("layer_error", json.dumps({k: {d: {m: v[d][m] for m in ("layer_rel_rms_mean", "layer_rel_rms_max")}
                                          for d in DTYPES} for k, v in report["layer_error"].items()}), flush=True)
    report["seconds"] = time.perf_counter() - began
    text = json.dumps(report, indent=1)
    if args.out:
        with atomic_file(args.out) as tmp:
            tmp.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
