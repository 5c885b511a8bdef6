"""GPU benchmark of URSA sampling with full-size random weights (no download).

Reports, per case (T2V 13/25/49 frames at 320x512, T2I 1024x1024 with IBQ dimensions): median seconds per step,
total seconds, peak VRAM, achieved TFLOP/s against a measured bf16 matmul rate, decode time; the same for a
reference-style baseline in the same run; plus attention backends (and their error against SDPA), torch.compile
and low-VRAM streaming.

    python benchmarks/bench_gpu.py --out bench.json            # on the GPU machine
    python benchmarks/bench_gpu.py --quick                      # CPU smoke test with a tiny model
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_reference import reference_generate  # noqa: E402
from random_model import random_model, random_prompt_ids, with_fused_projections  # noqa: E402

from ursa_core.attention import backends as attention  # noqa: E402
from ursa_core.sampling.generate import generate  # noqa: E402

CASES = {  # name: (model kind, frames, height, width, steps)
    "t2v13": ("fsq", 13, 320, 512, 50), "t2v25": ("fsq", 25, 320, 512, 50), "t2v49": ("fsq", 49, 320, 512, 50),
    "t2i1024": ("ibq", 1, 1024, 1024, 25),
}
QUICK = {"t2v5": ("tiny", 5, 64, 64, 6), "t2i": ("tiny", 1, 64, 64, 4)}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def forward_flops(config, seq: int, logit_rows: int) -> float:
    """One branch's forward: projections + attention (QK^T and PV) + the visual head on `logit_rows` rows."""
    hd, h = config.head_dim, config.hidden_size
    per_token = 2 * (h * config.num_attention_heads * hd * 2 + h * config.num_key_value_heads * hd * 2
                     + 3 * h * config.intermediate_size)
    attention = 4 * seq * seq * config.num_attention_heads * hd
    return config.num_hidden_layers * (seq * per_token + attention) + 2 * logit_rows * h * config.lm_head_size


class StepTimer:
    def __init__(self, device):
        self.device, self.times, self.last = device, [], None

    def start(self):
        sync(self.device)
        self.last = time.perf_counter()

    def __call__(self, *_):
        sync(self.device)
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def measure(run, device) -> dict:
    """Run `run(timer)`, return per-step times, total and peak memory."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer(device)
    timer.start()
    begin = timer.last
    tokens = run(timer)
    sync(device)
    total = time.perf_counter() - begin
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if torch.device(device).type == "cuda" else 0.0
    median = statistics.median(timer.times) if timer.times else total
    return {"step_s": timer.times, "median_step_s": median, "total_s": total,
            "peak_gib": peak, "tokens": tokens}


def executed_flops(model, frames, height, width, steps, trunc, guidance, optimized: bool) -> float:
    """FLOPs the run actually executes (optimized: no step-0 forward, one branch once t >= trunc)."""
    from ursa_core.sampling.generate import plan
    from ursa_core.sampling.settings import GenerationSettings
    p = plan(model, GenerationSettings(frames=frames, height=height, width=width, steps=steps), None)
    n = p.active.numel()
    seq = model.config.max_prompt_length + 1 + n
    total = 0.0
    for i, t in enumerate(p.grid.tolist()):
        if optimized and i == 0 and steps > 1:
            continue
        branches = 2 if (guidance > 1 and (t < trunc or not optimized)) else 1
        total += branches * forward_flops(model.config, seq, n if optimized else seq)
    return total


def run_optimized(model, case, steps, seed=0, sampler="auto", chunk=None, trunc=0.9) -> dict:
    _, frames, height, width, _ = case
    ids = random_prompt_ids(model.config)

    def go(timer):
        return generate(model, prompt_ids=ids, frames=frames, height=height, width=width, steps=steps,
                        guidance=7.0, guidance_trunc=trunc, seed=seed, sampler=sampler, chunk_tokens=chunk,
                        callback=timer).tokens
    result = measure(go, model.device)
    result["tflops"] = executed_flops(model, frames, height, width, steps, 0.9, 7.0, True) / result["total_s"] / 1e12
    return result


def run_baseline(model, case, steps) -> dict:
    """The reference-style loop on the same weights, eager (no compiled layers) with PyTorch's default SDPA."""
    _, frames, height, width, _ = case
    ids = random_prompt_ids(model.config)
    transformer = model.transformer
    saved = transformer.layer_call, transformer.attn_implementation
    transformer.layer_call = None
    transformer.set_attention("sdpa")
    try:
        result = measure(lambda timer: reference_generate(model, ids, frames, height, width, steps,
                                                          step_callback=timer), model.device)
    finally:
        transformer.layer_call = saved[0]
        transformer.set_attention(saved[1])
    result["tflops"] = executed_flops(model, frames, height, width, steps, 0.9, 7.0, False) / result["total_s"] / 1e12
    return result


def attention_backends(device, seq: int, dtype=torch.bfloat16, reps: int = 5) -> dict:
    """Milliseconds per bidirectional attention call [2 branches, 16 q / 8 kv heads, seq, 128] for every registered
    backend this machine can run (FlashAttention-4 and SageAttention when installed), on q/k/v in the layout the
    model hands them ([B, S, H, D] tensors viewed as [B, H, S, D])."""
    def make(heads):
        return torch.randn(2, seq, heads, 128, device=device, dtype=dtype).transpose(1, 2)
    q, k, v = make(16), make(8), make(8)
    out = {}
    for backend in [n for n in attention.available_names(device) if n != "math"]:
        try:
            fn = attention.attention_function(attention.resolve(backend, device))
            fn(q, k, v)
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                fn(q, k, v)
            sync(device)
            ms = (time.perf_counter() - start) / reps * 1e3
            out[backend] = {"ms": ms, "tflops": 4 * seq * seq * 16 * 128 * 2 / (ms / 1e3) / 1e12}
        except Exception as exc:  # report a backend this build/GPU lacks instead of aborting the run
            out[backend] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    return out


def fastest_backend(results: dict) -> str:
    ok = {k: v["ms"] for k, v in results.items() if "ms" in v}
    return min(ok, key=ok.get) if ok else "auto"


def token_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


def summarize(result: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()
            if k not in ("tokens", "step_s")}


def low_vram_section(case, steps, device) -> dict:
    from ursa_core.runtime.lowvram import enable_low_vram
    model = random_model(case[0], device)
    streamer = enable_low_vram(model.transformer, device)
    result = summarize(run_optimized(model, case, steps))
    result["resident_layer_gib"] = streamer.resident_bytes() / 2 ** 30
    return result


def _rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm())


@torch.no_grad()
def attention_agreement_section(model, case, backends=("flash4", "sage", "cudnn", "flex")) -> dict:
    """Each backend against SDPA on one forward of the full-size random model: the relative RMS error of the logits,
    and of every layer's output when each layer is fed the SDPA run's input (so one layer's kernel error is seen
    alone; with random weights errors compound chaotically from layer to layer, so end-to-end tokens judge nothing).
    """
    from ursa_core.model.sequence import build_sequence, predicting_positions
    from ursa_core.sampling.generate import plan
    from ursa_core.sampling.settings import GenerationSettings
    _, frames, height, width, _ = case
    p = plan(model, GenerationSettings(frames=frames, height=height, width=width, steps=2, shift=1.0), None)
    config, transformer = model.config, model.transformer
    tokens = torch.randint(0, config.lm_head_size, (1, *p.latent_shape), generator=torch.Generator().manual_seed(0))
    sequence = build_sequence(model, random_prompt_ids(config)[0], tokens)
    keep = predicting_positions(config, p.active).to(model.device)
    saved = transformer.attn_implementation, transformer.layer_call
    transformer.layer_call = None
    transformer.set_attention("sdpa")
    ref = model(sequence, keep, output_hidden_states=True)
    result = {"tokens": int(sequence.input_ids.shape[1])}
    for name in backends:
        if not attention.is_available(name, model.device):
            result[name] = "not installed"
            continue
        per_layer = []
        for i, layer in enumerate(transformer.model.layers):
            x = ref.hidden_states[i]
            transformer.set_attention("sdpa")
            expected = layer(x, sequence.cos, sequence.sin)
            transformer.set_attention(name)
            per_layer.append(_rel_rms(layer(x, sequence.cos, sequence.sin), expected))
        logits = model(sequence, keep)
        result[name] = {"logits_rel_rms": _rel_rms(logits, ref.logits), "layer_rel_rms_max": max(per_layer),
                        "layer_rel_rms_mean": sum(per_layer) / len(per_layer)}
    transformer.set_attention(saved[0])
    transformer.layer_call = saved[1]
    return result


def compile_section(model, case, steps) -> dict:
    from ursa_core.runtime.compiled import compile_layers
    compile_layers(model.transformer)
    start = time.perf_counter()
    run_optimized(model, case, 3, trunc=0.5)  # compiles both batch shapes
    compile_s = time.perf_counter() - start
    result = summarize(run_optimized(model, case, steps))
    result["step_s"] = [round(t, 4) for t in run_optimized(model, case, 4)["step_s"]]
    model.transformer.layer_call = None
    return {"compile_and_first_run_s": compile_s, **result}


def decode_section(kind: str, latent_shape, device, dtype=torch.bfloat16) -> dict:
    """Full-size tokenizer with random weights: seconds to decode one clip/image of tokens."""
    from ursa_core.visual_tokenizer.cosmos import CosmosFSQTokenizer
    from ursa_core.visual_tokenizer.ibq import IBQTokenizer
    if kind == "fsq":
        tokenizer = CosmosFSQTokenizer({})
    else:
        tokenizer = IBQTokenizer({"block_out_channels": [128, 128, 256, 256, 512], "num_vq_embeddings": 131072,
                           "vq_embed_dim": 256, "spatial_stride": 16})
    tokenizer = tokenizer.to(device, dtype).eval()
    ids = torch.randint(0, tokenizer.codebook_size, (1, *latent_shape), device=device)
    with torch.no_grad():
        tokenizer.decode(ids)  # warm-up
        result = measure(lambda timer: tokenizer.decode(ids), device)
    return {"decode_s": result["total_s"], "peak_gib": result["peak_gib"], "config": "random weights, " + kind}


def profile_section(model, case, label: str, rows: int = 22) -> str:
    """Kernel time table of one sampling step (after a warm-up run), to see where a step goes."""
    from torch.profiler import ProfilerActivity, profile
    run_optimized(model, case, 3)
    wall = run_optimized(model, case, 2)["total_s"]  # step 0 is skipped: exactly one step
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_optimized(model, case, 2)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)
    print(f"profile {label} (one step, wall {wall:.3f} s)\n{table}", flush=True)
    return f"wall {wall:.3f} s\n" + table


def agreement_section(model, case, steps) -> dict:
    """Optimized path vs the unoptimised torch path (no step skipping, chunked torch sampler), same seed."""
    fast = run_optimized(model, case, steps, seed=5)["tokens"]
    slow_no_skip = generate(model, prompt_ids=random_prompt_ids(model.config), frames=case[1], height=case[2],
                            width=case[3], steps=steps, guidance=7.0, seed=5, sampler="torch",
                            skip_noop_steps=False).tokens
    torch_path = run_optimized(model, case, steps, seed=5, sampler="torch")["tokens"]
    return {"fused_vs_torch": token_agreement(fast, torch_path),
            "skip_vs_no_skip_torch": token_agreement(torch_path, slow_no_skip)}


def prepare(model, args, report):
    """The optimized configuration: fastest attention kernel and compiled layers (unless --eager)."""
    from ursa_core.runtime.compiled import compile_layers
    from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed
    if args.fuse:
        model.transformer = with_fused_projections(model.transformer)
    model = with_speed(model, SpeedOptions(attention=report.get("attention_choice", "auto")),
                       Placement.single(model.device))
    if not args.eager and model.device.type == "cuda":
        compile_layers(model.transformer, mode=args.compile_mode)
    return model


def run_cases(args, device, report) -> None:
    cases = QUICK if args.quick else {k: CASES[k] for k in args.cases.split(",")}
    model, kind = None, None
    for name, case in cases.items():
        if case[0] != kind:
            model, kind = None, None
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            model, kind = random_model(case[0], device), case[0]
            model = prepare(model, args, report)
        steps = case[4] if not args.steps else args.steps
        if not args.eager:
            # Compile outside the timed run (reported separately): 3 steps with trunc 0.5 hit both the guided
            # (batch 2) and the unguided (batch 1) shapes.
            run_optimized(model, case, 3, trunc=0.5)
        optimized = run_optimized(model, case, steps)
        entry = {"optimized": {**summarize(optimized), "step_s": [round(t, 4) for t in optimized["step_s"]]}}
        if "baseline" in args.sections:
            base_steps = min(steps, args.baseline_steps or steps)
            entry["baseline"] = summarize(run_baseline(model, case, base_steps))
            entry["baseline"]["steps_measured"] = base_steps
            entry["speedup"] = entry["baseline"]["median_step_s"] / entry["optimized"]["median_step_s"]
        report["cases"][name] = entry
        print(name, json.dumps(entry), flush=True)
    report["_last_model"] = (model, kind)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model on CPU (smoke test of this script)")
    parser.add_argument("--cases", default="t2v13,t2v25,t2v49,t2i1024")
    parser.add_argument("--sections", default="probe,cases,baseline,ablate,lowvram,compile,decode,agree")
    parser.add_argument("--steps", type=int, help="override every case's step count")
    parser.add_argument("--baseline-steps", type=int, help="measure the baseline on this many steps")
    parser.add_argument("--attention", default="fastest",
                        help="a backend of ursa_core.attention (auto, sdpa, cudnn, flash4, ...) or 'fastest'")
    parser.add_argument("--eager", action="store_true", help="optimized path without torch.compile")
    parser.add_argument("--fuse", action="store_true", help="fused QKV/gate-up GEMMs (measured: no gain, off)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. reduce-overhead)")
    parser.add_argument("--out", help="write the JSON report here")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "cases": {}}
    sections = args.sections.split(",")
    if "probe" in sections and device.type == "cuda":
        report["matmul_bf16_tflops"] = matmul_tflops(device)
        report["attention_49f"] = attention_backends(device, seq=33_601)
        report["attention_49f_fp16"] = attention_backends(device, seq=33_601, dtype=torch.float16)
        print("probe", json.dumps(report), flush=True)
    report["attention_choice"] = (fastest_backend(report.get("attention_49f", {})) if args.attention == "fastest"
                                  else args.attention)
    if "cases" in sections:
        run_cases(args, device, report)
    extra_sections(args, device, report, sections)
    report.pop("_last_model", None)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def extra_sections(args, device, report, sections) -> None:
    big = ("tiny", 5, 64, 64, 6) if args.quick else CASES["t2v49"]
    few = 3 if args.quick else 8
    model, kind = report.pop("_last_model", (None, None))
    if kind != big[0]:
        model = None  # drop the other model before building this one
        torch.cuda.empty_cache() if device.type == "cuda" else None
        model = random_model(big[0], device)
    model.transformer.set_attention(attention.resolve(report["attention_choice"], device))
    model.transformer.layer_call = None  # ablations below start from the eager model
    if "ablate" in sections:
        report["ablation_49f"] = {"eager": summarize(run_optimized(model, big, few)),
                                  "eager_torch_sampler": summarize(run_optimized(model, big, few, sampler="torch"))}
    if args.fuse:
        model.transformer = with_fused_projections(model.transformer)
        if "ablate" in sections:
            report["ablation_49f"]["eager_fused_projections"] = summarize(run_optimized(model, big, few))
    if "agree_attention" in sections and device.type == "cuda":
        report["attention_agreement_49f"] = attention_agreement_section(model, big)
        print("agree_attention", json.dumps(report["attention_agreement_49f"]), flush=True)
    if "agree" in sections:
        small = ("tiny", 5, 64, 64, 6) if args.quick else CASES["t2v13"]
        report["agreement_13f"] = agreement_section(model, small, 20 if not args.quick else small[4])
    if "profile" in sections and device.type == "cuda":
        report["profile_49f_eager"] = profile_section(model, big, "eager")
    if "compile" in sections and device.type == "cuda":
        report["compile_49f"] = compile_section(model, big, few)
    if "profile" in sections and device.type == "cuda":
        from ursa_core.runtime.compiled import compile_layers
        compile_layers(model.transformer)
        report["profile_49f_compiled"] = profile_section(model, big, "compiled")
        model.transformer.layer_call = None
    if "profile_t2i" in sections and device.type == "cuda":
        ibq = random_model("ibq", device)
        ibq = prepare(ibq, args, report)
        report["profile_t2i_compiled"] = profile_section(ibq, CASES["t2i1024"], "t2i compiled")
        del ibq
    if "decode" in sections and device.type == "cuda":
        report["decode_fsq_49f"] = decode_section("fsq", (13, 40, 64), device)
        report["decode_ibq_1024"] = decode_section("ibq", (1, 64, 64), device)
    del model
    if "lowvram" in sections:
        torch.cuda.empty_cache() if device.type == "cuda" else None
        report["low_vram_49f"] = low_vram_section(big, few, device)
    print("extra", json.dumps({k: v for k, v in report.items() if k != "cases"}, default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
