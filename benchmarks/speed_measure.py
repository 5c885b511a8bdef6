"""Measuring sampling speed for benchmarks/bench_speed.py: models with random weights, timed generations, per-step
medians and their extrapolation, the GPU kernel timeline of a step, the GPU clock while a run lasts.

Imported after bench_speed.py has put the code under test first on sys.path (this tree, or a copy of the previous
commit in the worker subprocess), so it only uses names that both have: random_model's helpers, `with_speed`,
`SpeedOptions`, `Placement`, `generate`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch
from random_model import random_model, random_prompt_ids, random_transformer

from ursa_core.model.config import TransformerConfig
from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed
from ursa_core.sampling.generate import generate

CASES = {"t2v49": (49, 320, 512), "t2i1024": (1, 1024, 1024), "tiny": (1, 32, 32)}
# The 0.6B shape: Qwen3-0.6B's stack (hidden 1024, 16 x 128 query heads, 8 KV heads, 28 layers) with FSQ320's head.
SHAPES = {"fsq-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                           num_hidden_layers=28)}
WARM_STEPS = 2  # steps 1 and 2 of a measured run: eager warm-up, then (with CUDA graphs) the capture


def make_model(kind: str, device):
    """kind: fsq (1.7B, K = 64 000), fsq-0.6b, ibq (1.7B, K = 131 072) or tiny; full-size random bf16 weights."""
    if kind not in SHAPES:
        return random_model(kind, device)
    model = random_model("tiny", device)  # the tiny model's path and geometry are FSQ's; its transformer is replaced
    config = TransformerConfig(**SHAPES[kind])
    return dataclasses.replace(model, config=config, transformer=random_transformer(config, device, torch.bfloat16))


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """The per-step callback: waits for the device, then records the time since the previous step ended."""

    def __init__(self, device):
        self.device, self.times, self.last = device, [], 0.0

    def start(self) -> None:
        sync(self.device)
        self.last = time.perf_counter()

    def __call__(self, info) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def steady_median(step_s: list[float]) -> float:
    """Median of the steps after the warm-up ones, the last (final) step left out."""
    steady = step_s[1 + WARM_STEPS:-1]
    return statistics.median(steady if steady else step_s[1:] or step_s)


def timed_generate(model, case, steps: int, guidance: float, trunc: float, seed: int = 0, monitor=None) -> dict:
    frames, height, width = case
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = StepClock(device)
    window = monitor.window() if monitor else None
    clock.start()
    begin = clock.last
    tokens = generate(model, prompt_ids=random_prompt_ids(model.config), frames=frames, height=height, width=width,
                      steps=steps, guidance=guidance, guidance_trunc=trunc, seed=seed, callback=clock).tokens
    sync(device)
    total = time.perf_counter() - begin
    result = {"steps": steps, "guidance": guidance, "trunc": trunc, "step_s": [round(t, 5) for t in clock.times],
              "median_step_s": round(steady_median(clock.times), 5), "total_s": round(total, 4),
              "overhead_s": round(total - sum(clock.times[1:]), 4),
              "tokens_sha1": hashlib.sha1(tokens.numpy().tobytes()).hexdigest()[:16], "tokens": tokens}
    if device.type == "cuda":
        result["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 3)
    if window:
        result["gpu"] = window.close()
    return result


def handle_for(model, options: dict):
    """A handle of `model` with the speed options this code knows; an option it lacks must be left at its default."""
    known = {f.name for f in dataclasses.fields(SpeedOptions)}
    unknown = {k: v for k, v in options.items() if k not in known and v}
    if unknown:
        raise ValueError(f"this code has no speed option {sorted(unknown)}")
    options = {k: v for k, v in options.items() if k in known}
    return with_speed(model, SpeedOptions(**options), Placement.single(model.device))


def run_once(handle, case, run: dict, monitor=None) -> dict:
    """One measured generation as `run` says (steps, guidance, trunc), after a warm-up generation of the same
    kind (`warm` steps, `warm_trunc`) that compiles what it needs; the warm-up's time is reported apart."""
    warm = run.get("warm", 3)
    start = time.perf_counter()
    if warm:
        timed_generate(handle, case, warm, run["guidance"], run.get("warm_trunc", run["trunc"]))
    warm_s = time.perf_counter() - start
    result = timed_generate(handle, case, run["steps"], run["guidance"], run["trunc"], run.get("seed", 0), monitor)
    return {"name": run["name"], "warm_s": round(warm_s, 2), **result}


def run_spec(spec: dict, model=None, progress=print, monitor=None) -> dict:
    """Build (or take) the model, make the handle, run each of spec["runs"]; the worker's whole job."""
    device = torch.device(spec.get("device", "cuda"))
    start = time.perf_counter()
    model = model or make_model(spec["kind"], device)
    built_s = time.perf_counter() - start
    handle = handle_for(model, spec.get("options", {}))
    out = {"kind": spec["kind"], "case": list(spec["case"]), "options": spec.get("options", {}),
           "attention": handle.transformer.attn_implementation, "model_build_s": round(built_s, 2), "runs": {}}
    for run in spec["runs"]:
        result = run_once(handle, tuple(spec["case"]), run, monitor)
        result.pop("tokens")
        out["runs"][run["name"]] = result
        progress(f"  {spec['kind']} {run['name']}: median step {result['median_step_s']:.4f} s, total "
                 f"{result['total_s']:.2f} s ({run['steps']} steps), warm-up {result['warm_s']:.1f} s")
    return out


def step_counts(steps: int, trunc: float, shift: float = 1.0, guided: bool = True) -> dict:
    """How many steps of a clip from noise run two branches, one branch, or no forward (the no-op first step)."""
    from ursa_core.path.schedule import time_grid
    grid = time_grid(steps, shift).tolist()
    two = sum(1 for i, t in enumerate(grid) if i > 0 and guided and t < trunc)
    return {"skipped": 1 if steps > 1 else 0, "guided": two, "unguided": steps - (1 if steps > 1 else 0) - two}


def extrapolate(guided_s: float, unguided_s: float, overhead_s: float, steps: int, trunc: float,
                shift: float = 1.0) -> dict:
    counts = step_counts(steps, trunc, shift)
    total = overhead_s + counts["guided"] * guided_s + counts["unguided"] * unguided_s
    return {"total_s": round(total, 3), **counts, "how": "overhead + guided x median guided step + unguided x "
            "median unguided step (medians of steady steps of separate guided / unguided runs)"}


CATEGORIES = (("attention", ("flash", "fmha", "sdpa", "attn", "attention", "qk_int8", "quant_per", "sub_mean",
                             "per_channel", "transpose_pad")),
              ("sampler", ("_categorical_kernel", "_jump_kernel")),
              ("fused_ops", ("_rms_norm_kernel", "_qk_norm_rope_kernel", "_swiglu_kernel")),
              ("gemm", ("gemm", "xmma", "nvjet", "cutlass", "cublas", "sm90_", "wgmma")),
              ("inductor", ("triton_",)))


def category(name: str, kind: str) -> str:
    if kind != "kernel":
        return "memcpy/memset"
    low = name.lower()
    return next((label for label, keys in CATEGORIES if any(k in low for k in keys)), "other")


def kernel_timeline(trace: Path, gaps: int = 8) -> dict:
    """Busy and idle time of the GPU in a chrome trace: per category, the idle gaps, the largest gaps and what ran
    either side of them, the kernels taking the most time."""
    events = [e for e in json.loads(Path(trace).read_text()).get("traceEvents", [])
              if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    if not events:
        return {"error": "no GPU events in the trace"}
    events.sort(key=lambda e: e["ts"])
    by_category, by_name = defaultdict(float), defaultdict(float)
    idle, gap_list, end = 0.0, [], events[0]["ts"]
    for before, event in zip([None] + events[:-1], events):
        by_category[category(event["name"], event["cat"])] += event["dur"]
        by_name[event["name"][:90]] += event["dur"]
        if event["ts"] > end:
            idle += event["ts"] - end
            gap_list.append((event["ts"] - end, (before or {}).get("name", "")[:60], event["name"][:60]))
        end = max(end, event["ts"] + event["dur"])
    span = end - events[0]["ts"]
    top = sorted(gap_list, reverse=True)[:gaps]
    ms = lambda us: round(us / 1e3, 3)  # noqa: E731
    return {"span_ms": ms(span), "busy_ms": ms(span - idle), "idle_ms": ms(idle), "kernels": len(events),
            "idle_over_100us_ms": ms(sum(g for g, _, _ in gap_list if g > 100)),
            "by_category_ms": {k: ms(v) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
            "largest_gaps": [{"ms": ms(g), "after": a, "before": b} for g, a, b in top],
            "top_kernels_ms": {k: ms(v) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:15]}}


def profile_steps(handle, case, trace: Path, steps: int = 6, guidance: float = 7.0) -> dict:
    """The GPU timeline of the steady steps of a run (steps 3 .. steps-2: after the warm-up and capture, before the
    final step), each step's host gap included; torch.profiler with CUDA activity only (least host overhead)."""
    from torch.profiler import ProfilerActivity, profile
    frames, height, width = case
    prof = profile(activities=[ProfilerActivity.CUDA if handle.device.type == "cuda" else ProfilerActivity.CPU])
    first, last = 1 + WARM_STEPS, steps - 2

    def callback(info):
        sync(handle.device)
        if info.step == first - 1:
            prof.start()
        elif info.step == last:
            prof.stop()
    generate(handle, prompt_ids=random_prompt_ids(handle.config), frames=frames, height=height, width=width,
             steps=steps, guidance=guidance, guidance_trunc=1.0, seed=0, callback=callback)
    prof.export_chrome_trace(str(trace))
    return {"steps_profiled": last - first + 1, **kernel_timeline(trace)}


class ClockMonitor:
    """Samples the GPU's SM clock, power and temperature twice a second (NVML), so a slower run can be told apart
    from a throttled card. Does nothing where NVML is missing."""

    def __init__(self, index: int = 0, period: float = 0.5):
        self.samples: list[tuple] = []
        try:
            import pynvml
            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # noqa: BLE001 - no NVML: no samples
            self._nvml = None
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        nvml = self._nvml
        while not self._stop.wait(period):
            try:
                self.samples.append((time.perf_counter(), nvml.nvmlDeviceGetClockInfo(self._handle, nvml.NVML_CLOCK_SM),
                                     nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000,
                                     nvml.nvmlDeviceGetTemperature(self._handle, nvml.NVML_TEMPERATURE_GPU)))
            except Exception:  # noqa: BLE001
                return

    def window(self):
        return _Window(self) if self._nvml else None

    def close(self) -> None:
        if self._nvml:
            self._stop.set()


class _Window:
    def __init__(self, monitor: ClockMonitor):
        self.monitor, self.start = monitor, time.perf_counter()

    def close(self) -> dict:
        inside = [s for s in self.monitor.samples if s[0] >= self.start]
        if not inside:
            return {}
        clocks, power, temp = zip(*((s[1], s[2], s[3]) for s in inside))
        return {"sm_mhz_mean": round(statistics.mean(clocks)), "sm_mhz_min": min(clocks),
                "power_w_mean": round(statistics.mean(power)), "temp_c_max": max(temp)}
