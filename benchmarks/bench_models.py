"""Every released model size on one GPU, full-size random weights (no download): URSA-0.6B vs URSA-1.7B, guided
(cfg 7: two branches every step) vs CFG-free (cfg 1, as RL-tuned models run: one branch), step time and peak memory.

Cases: a 49x320x512 video (FSQ320), a 1024^2 image (IBQ1024) and a 512^2 image (IBQ512). About 3 minutes on one
H100; the README's model table and docs/PERFORMANCE.md are filled from its JSON.

    python benchmarks/bench_models.py --out models.json          # on the GPU machine
    python benchmarks/bench_models.py --quick --out quick.json   # CPU smoke test: tiny shapes of both sizes
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

import speed_measure  # noqa: E402
from random_model import IBQ_CODES, IBQ_DIM, random_prompt_ids, random_transformer  # noqa: E402

from ursa_core.checkpoint.loader import URSAModel  # noqa: E402
from ursa_core.attention.backends import resolve as resolve_attention  # noqa: E402
from ursa_core.model.config import SchedulerConfig, TransformerConfig  # noqa: E402
from ursa_core.path.metric_path import MetricPath  # noqa: E402
from ursa_core.sampling.generate import generate, sampling_memory  # noqa: E402
from ursa_core.visual_tokenizer.fsq import code_table  # noqa: E402
from ursa_core.visual_tokenizer.geometry import VisualGeometry  # noqa: E402

TEXT_VOCAB, FSQ_CODES = 151_669, 64_000
# Qwen3-0.6B / Qwen3-1.7B decoder dims (docs/MODELS.md); 28 layers, 16 query / 8 KV heads of 128 in both.
SIZES = {"0.6B": dict(hidden_size=1024, intermediate_size=3072), "1.7B": dict(hidden_size=2048, intermediate_size=6144)}
CASES = {  # name: (tokenizer, frames, height, width)
    "t2v49_320x512": ("fsq", 49, 320, 512), "t2i_1024": ("ibq", 1, 1024, 1024), "t2i_512": ("ibq", 1, 512, 512),
}
QUICK_SIZES = {"0.6B": dict(hidden_size=128, intermediate_size=384, num_attention_heads=2, num_key_value_heads=1,
                            num_hidden_layers=2),
               "1.7B": dict(hidden_size=256, intermediate_size=768, num_attention_heads=2, num_key_value_heads=1,
                            num_hidden_layers=2)}
QUICK_CASES = {"t2v5_32": ("fsq", 5, 32, 32), "t2i_32": ("ibq", 1, 32, 32)}
MODES = {"guided": 7.0, "cfg_free": 1.0}   # cfg; guided runs guidance_trunc 1.0 so every step has two branches


def config(size: dict, tokenizer: str, quick: bool) -> TransformerConfig:
    codes = FSQ_CODES if tokenizer == "fsq" else (512 if quick else IBQ_CODES)
    text = 1000 if quick else TEXT_VOCAB
    extra = dict(bov_token_id=999, max_prompt_length=24) if quick else {}
    return TransformerConfig(**size, vocab_size=text + codes, lm_vocab_size=text, lm_head_size=codes, **extra)


def build(size: dict, tokenizer: str, device, dtype, quick: bool, attention: str = "auto") -> URSAModel:
    cfg = config(size, tokenizer, quick)
    transformer = random_transformer(cfg, device, dtype)
    transformer.set_attention(resolve_attention(attention, device))
    if tokenizer == "fsq":
        emb, geometry = code_table(), VisualGeometry()
    else:
        emb = torch.randn(cfg.lm_head_size, IBQ_DIM, generator=torch.Generator().manual_seed(1))
        geometry = VisualGeometry(temporal_stride=1, spatial_stride=16, image_only=True)
    path = MetricPath(emb, c=3.0, alpha=0.9).to(device)
    return URSAModel(Path(f"random-{tokenizer}"), cfg, SchedulerConfig(shift=1.0), transformer, path, None, geometry)


class StepClock(speed_measure.StepClock):
    """Seconds between step callbacks (speed_measure's clock), and the branches (batch rows of input ids) of every
    transformer pass."""

    def __init__(self, model: URSAModel):
        super().__init__(model.device)
        self.branches = set()
        self.hook = model.transformer.model.embed_tokens.register_forward_pre_hook(
            lambda module, args: self.branches.add(int(args[0].shape[0])))


def measure(model: URSAModel, case: tuple, steps: int, guidance: float) -> dict:
    _, frames, height, width = case
    ids = random_prompt_ids(model.config)
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(model.device)
    clock = StepClock(model)
    clock.start()
    begin = clock.last
    try:
        generate(model, prompt_ids=ids, frames=frames, height=height, width=width, steps=steps, guidance=guidance,
                 guidance_trunc=1.0, seed=0, callback=clock)
    finally:
        clock.hook.remove()
    speed_measure.sync(model.device)
    ran = clock.times[1:] or clock.times   # step 0 (t = 0) moves no token and runs no forward
    peak = torch.cuda.max_memory_allocated(model.device) / 2 ** 30 if model.device.type == "cuda" else 0.0
    # what the memory check before a run expects on top of the weights (ursa_core.runtime.memory)
    estimate = sampling_memory(model, model.geometry.latent_shape(frames, height, width), 1, guidance).total
    return {"median_step_s": round(statistics.median(ran), 4), "total_s": round(time.perf_counter() - begin, 3),
            "peak_gib": round(peak, 3), "estimate_above_weights_bytes": int(estimate),
            "branches": sorted(clock.branches), "steps": steps}


def run(sizes: dict, cases: dict, steps: int, device, dtype, quick: bool, attention: str = "auto") -> dict:
    report = {"device": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu",
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "steps": steps,
              "attention": resolve_attention(attention, device), "date": time.strftime("%Y-%m-%d"), "results": {}}
    for size_name, size in sizes.items():
        for tokenizer in sorted({case[0] for case in cases.values()}):
            model = build(size, tokenizer, device, dtype, quick, attention)
            weights = sum(p.numel() * p.element_size() for p in model.transformer.parameters()) / 2 ** 30
            for case_name, case in cases.items():
                if case[0] != tokenizer:
                    continue
                entry = {"weights_gib": round(weights, 3)}
                for mode, guidance in MODES.items():
                    entry[mode] = measure(model, case, steps, guidance)
                    print(f"{size_name} {case_name} {mode}: {entry[mode]}", flush=True)
                entry["cfg_free_speedup"] = round(entry["guided"]["median_step_s"]
                                                  / max(entry["cfg_free"]["median_step_s"], 1e-9), 3)
                report["results"][f"{size_name}/{case_name}"] = entry
            del model
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (a smoke test of this script)")
    parser.add_argument("--steps", type=int, default=6, help="sampling steps per run (the median skips step 0)")
    parser.add_argument("--attention", default="auto", help="attention backend (auto: flash4 when installed)")
    args = parser.parse_args(argv)
    if args.quick:
        report = run(QUICK_SIZES, QUICK_CASES, 3, torch.device("cpu"), torch.float32, True, args.attention)
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA GPU (use --quick for the CPU smoke test)")
        report = run(SIZES, CASES, args.steps, torch.device("cuda"), torch.bfloat16, False, args.attention)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
