"""Multi-GPU benchmark: one clip on several GPUs (CFG / sequence / both) and prompt-set throughput (data parallel).

Full-size random weights (no download), 49x320x512, 50 steps. Per mode: seconds per clip, median step, the
communication time per step (collectives timed with CUDA events), peak memory per rank, and the share of tokens
equal to the 1-GPU run (bf16 on GPUs: equal in exact arithmetic, so a low share means a bug, a share just under 1
is rounding). Then batch throughput: every rank renders whole clips claimed from one counter (`ursa batch`'s
Claims) over --batch-prompts prompts at --batch-steps steps, in clips per hour.

    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --out bench_2gpu.json      # modes that fit 2 GPUs
    torchrun --nproc-per-node 4 benchmarks/bench_parallel.py --out bench_4gpu.json
    python benchmarks/bench_parallel.py --out bench_1gpu.json                           # the 1-GPU baselines
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --quick --out q.json      # CPU smoke test (gloo)

A mode the world size cannot run (cfg needs 2 ranks, cfg+sp 4 or more) is reported as skipped with the reason.
Communication time is measured between CUDA events recorded around each collective on the compute stream, so it
includes waiting for the slowest rank of the group (load imbalance shows up there, not in compute).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from comm_timer import CommTimer  # noqa: E402
from random_model import random_model, random_prompt_ids, random_transformer  # noqa: E402

from ursa_core.attention import backends as attention  # noqa: E402
from ursa_core.batch.prompt_sets import Claims  # noqa: E402
from ursa_core.errors import InputError  # noqa: E402
from ursa_core.files.atomic import atomic_file  # noqa: E402
from ursa_core.parallel.distributed import build_layout, finish, init_from_env, join_launch  # noqa: E402
from ursa_core.sampling.generate import generate  # noqa: E402

MODES = ("single", "cfg", "sp", "cfg+sp")
CLIP = dict(frames=49, height=320, width=512, steps=50)
QUICK_CLIP = dict(frames=9, height=64, width=64, steps=6)


def setup():
    """torchrun's rendezvous when WORLD_SIZE is set (ursa_core's launch session: NCCL on cuda:LOCAL_RANK, gloo on
    the CPU); returns (session or None, rank, world, device)."""
    session = join_launch()
    rank, world, device = init_from_env("auto", session)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return session, rank, world, device


def build_model(quick: bool, device: torch.device):
    """Full-size FSQ320 random weights in bf16 (or a tiny fp32 model with 4 KV heads for --quick), identical on
    every rank (rank 0's weights are broadcast)."""
    if quick:
        model = random_model("tiny", device, torch.float32)
        config = dataclasses.replace(model.config, num_attention_heads=8, num_key_value_heads=4, head_dim=8)
        model = dataclasses.replace(model, config=config,
                                    transformer=random_transformer(config, device, torch.float32, seed=1))
    else:
        model = random_model("fsq", device, torch.bfloat16)
    if dist.is_initialized():
        for tensor in model.transformer.state_dict().values():
            dist.broadcast(tensor, 0)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def timed_clip(model, ids, clip: dict, layout, device, seed: int = 0) -> dict:
    """One clip: total and per-step seconds, communication per executed step, peak memory, the tokens."""
    step_ends: list[tuple[float, bool]] = []

    def on_step(info) -> None:
        sync(device)
        step_ends.append((time.perf_counter(), info.predicted is not None))  # no prediction: a skipped no-op step
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    timer = CommTimer()
    barrier()
    sync(device)
    began = time.perf_counter()
    with timer.timed():
        tokens = generate(model, prompt_ids=ids, guidance=7.0, seed=seed, callback=on_step, parallel=layout,
                          **clip).tokens
    sync(device)
    total = time.perf_counter() - began
    ends = [end for end, _ in step_ends]
    executed = [b - a for a, b, (_, ran) in zip([began, *ends], ends, step_ends) if ran]
    return {"total_s": total, "median_step_s": statistics.median(executed), "executed_steps": len(executed),
            "comm_s_per_step": timer.seconds() / max(len(executed), 1), "comm_calls": timer.calls,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0,
            "tokens": tokens}


def run_mode(mode: str, model, ids, clip: dict, device, rank: int, world: int) -> dict:
    """Warm up with 2 steps, then one timed clip; `single` runs on rank 0 while the others wait."""
    if mode == "single":
        layout = None
        if rank != 0:
            barrier()
            barrier()
            return {}
    else:
        try:
            layout = build_layout(mode, model.config.num_key_value_heads)
        except InputError as exc:
            return {"skipped": str(exc)}
    generate(model, prompt_ids=ids, guidance=7.0, parallel=layout, **{**clip, "steps": 2})
    result = timed_clip(model, ids, clip, layout, device)
    if mode == "single" and world > 1:
        barrier()  # pairs with the waiting ranks' two barriers (timed_clip holds the first)
    peaks = [result["peak_gib"]]
    if layout is not None and dist.is_initialized():
        gathered = [None] * world
        dist.all_gather_object(gathered, result["peak_gib"])
        peaks = gathered
    result.update(ranks=1 if layout is None else layout.world, peak_gib_per_rank=peaks)
    return result


def batch_throughput(model, clip: dict, prompts: int, steps: int, device, rank: int, world: int, store) -> dict:
    """Data parallel: each rank renders whole clips (tokens only) claimed from the shared counter."""
    claims = Claims(prompts, store, prefix="bench_batch")
    short = {**clip, "steps": steps}
    generate(model, prompt_ids=random_prompt_ids(model.config, 0), guidance=7.0, **{**short, "steps": 2})  # warm
    barrier()
    began, mine = time.perf_counter(), 0
    while (index := claims.next()) is not None:
        generate(model, prompt_ids=random_prompt_ids(model.config, index), guidance=7.0, seed=index, **short)
        mine += 1
    sync(device)
    barrier()
    seconds = time.perf_counter() - began
    per_rank = [mine]
    if dist.is_initialized():
        per_rank = [None] * world
        dist.all_gather_object(per_rank, mine)
    return {"ranks": world, "clips": prompts, "steps": steps, "seconds": seconds,
            "clips_per_hour": prompts / seconds * 3600, "clips_per_rank": per_rank}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON report (written by rank 0)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--steps", type=int, help="sampling steps of the timed clip (default 50; --quick 6)")
    parser.add_argument("--frames", type=int, help="default 49 (--quick 9)")
    parser.add_argument("--batch-prompts", type=int, default=8, help="clips in the throughput run (>= 8)")
    parser.add_argument("--batch-steps", type=int, default=10, help="steps per clip in the throughput run")
    parser.add_argument("--attention", default="auto",
                        help="attention backend of every rank (sequence parallel wraps it); default: auto")
    parser.add_argument("--quick", action="store_true", help="tiny fp32 model on the CPU (gloo): a smoke test")
    args = parser.parse_args(argv)
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; use {MODES}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    session, rank, world, device = setup()
    model = build_model(args.quick, device)
    model.transformer.set_attention(attention.resolve(args.attention, device))
    clip = dict(QUICK_CLIP if args.quick else CLIP)
    clip.update({k: v for k, v in (("steps", args.steps), ("frames", args.frames)) if v is not None})
    ids = random_prompt_ids(model.config)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "world": world,
              "attention": model.transformer.attn_implementation,
              "clip": clip, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(sys.argv), "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"), "modes": {}}
    single = None
    for mode in args.modes.split(","):
        result = run_mode(mode, model, ids, clip, device, rank, world)
        tokens = result.pop("tokens", None)
        if mode == "single" and world > 1:   # share rank 0's tokens so every mode can be compared
            holder = [tokens]
            dist.broadcast_object_list(holder, 0)
            tokens = holder[0]
        if mode == "single":
            single = tokens
        elif tokens is not None and single is not None:
            result["tokens_equal_to_single"] = float((tokens == single).float().mean())
        if rank == 0:
            report["modes"][mode] = result
            print(mode, json.dumps(result), flush=True)
    report["batch"] = batch_throughput(model, clip, args.batch_prompts, args.batch_steps, device, rank, world,
                                       session.store if session is not None else None)
    if rank == 0:
        print("batch", json.dumps(report["batch"]), flush=True)
        with atomic_file(args.out) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.out}")
    finish(session)
    return 0


if __name__ == "__main__":
    sys.exit(main())
