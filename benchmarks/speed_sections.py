"""The sections of benchmarks/bench_speed.py (its module doc says what each call measures and how), and what they
share: the time budget, the report rewritten after every section, per-step measurements, the previous-code worker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from speed_measure import CASES, extrapolate, make_model, profile_steps, run_once

REPO = Path(__file__).resolve().parent.parent
BENCH_SPEED = Path(__file__).resolve().parent / "bench_speed.py"


class Run:
    """What one invocation shares: the time budget, the report (rewritten after every section), the log."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.start = args, device, time.perf_counter()
        self.report = {"call": args.call, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                       else "cpu", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "sections": {}}
        self.path = Path(args.out_dir) / f"bench_speed_{args.call}.json"
        self.monitor = None
        self.attention = "auto"  # call b pins the kernel the probe saw working
        self.keep: dict = {}  # warm handles later sections reuse (compiling again costs ~10 s a shape)
        self.error_backends = ("sage2", "flash4")  # judged layer by layer against SDPA
        # Triton kernels run on GPUs (on CPU tensors only under Triton's interpreter: far too slow for the smoke test;
        # tests/test_benchmarks.py checks fused_layer_error there on its own)
        self.fused_ok = device.type == "cuda"
        self.guided_s, self.unguided_s = (1.3, 0.7) if device.type == "cuda" else (0.2, 0.1)  # refined as measured

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - self.start:6.1f}s] {text}", flush=True)

    def save(self) -> None:
        from ursa_core.files.atomic import atomic_file
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(self.report, indent=1, default=str))

    def section(self, name: str, estimate_s: float, body):
        """Run body() as section `name` if ~estimate_s fits in the budget; its result (or error) goes in the report."""
        if self.left() < estimate_s:
            self.report["sections"][name] = {"skipped": f"budget: {self.left():.0f} s left, needs ~{estimate_s:.0f} s"}
            self.log(f"{name}: skipped ({self.report['sections'][name]['skipped']})")
            self.save()
            return None
        self.log(f"{name}: start (~{estimate_s:.0f} s of {self.left():.0f} s left)")
        begin = time.perf_counter()
        try:
            result = body()
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            result = {"error": f"{type(exc).__name__}: {str(exc)[:400]}",
                      "traceback": traceback.format_exc().splitlines()[-12:]}
            self.log(f"{name}: FAILED {result['error']}")
        result = result if isinstance(result, dict) else {"result": result}
        result["section_s"] = round(time.perf_counter() - begin, 1)
        self.report["sections"][name] = result
        self.save()
        self.log(f"{name}: done in {result['section_s']} s")
        return result

    def per_step(self, guided: bool) -> float:
        return self.guided_s if guided else self.unguided_s


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "tokens"}


def measure(run: Run, handle, case, label: str, guided: bool = True, warm: int = 0) -> dict:
    """Per-step median of `handle` on `case` (see the module doc); `warm` > 0 first runs that many steps to compile."""
    spec = {"name": label, "steps": 4 + run.args.measured, "guidance": 7.0 if guided else 1.0, "trunc": 1.0,
            "warm": warm}
    result = run_once(handle, case, spec, run.monitor)
    run.log(f"  {label}: median {'guided' if guided else 'one-branch'} step {result['median_step_s']:.4f} s "
            f"(steps {result['step_s'][1:]}), peak {result.get('peak_alloc_gib', 0)} GiB, warm-up {result['warm_s']} s")
    if guided:
        run.guided_s = result["median_step_s"]
    else:
        run.unguided_s = result["median_step_s"]
    return result


def worker_spec(run: Run, kind: str, case, options: dict, runs: list) -> dict:
    """The previous commit's code, in a subprocess (ursa_core imported from --prev): spec -> its run_spec result."""
    if not run.args.prev or not (Path(run.args.prev) / "ursa_core").is_dir():
        return {"skipped": f"no previous code (--prev {run.args.prev!r} holds no ursa_core/)"}
    spec = {"kind": kind, "case": list(case), "options": options, "runs": runs, "device": str(run.device)}
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, str(BENCH_SPEED), "--worker", json.dumps(spec), "--code-root",
                   str(Path(run.args.prev).resolve()), "--result", str(result_path)]
        try:
            done = subprocess.run(command, timeout=max(10.0, run.left()), cwd=str(REPO))
        except subprocess.TimeoutExpired:
            return {"error": "the previous-code worker ran out of budget"}
        if done.returncode != 0 or not result_path.is_file():
            return {"error": f"the previous-code worker exited {done.returncode}"}
        return json.loads(result_path.read_text())


def handle(model, attention: str, compile: bool | None = None, graphs: bool = False, fused=(), **options):
    """A speed handle (benchmark-side switches: CUDA graphs and the fused-kernel kinds flipped on its transformer);
    compiled layers by default on a GPU (not on the CPU smoke test)."""
    from speed_measure import handle_for
    compile = model.device.type == "cuda" if compile is None else compile
    made = handle_for(model, {"attention": attention, "compile": compile, **options})
    made.transformer.graph_steps = graphs
    if fused:
        made.transformer.set_fused_kernels(fused)
    return made


def faster(candidate: dict, base: dict, margin: float = 0.01) -> bool:
    """Kept only what pays: at least `margin` faster per step than the state it changes."""
    return candidate["median_step_s"] < (1 - margin) * base["median_step_s"]


def variants(run: Run, model, case, attention: str, fused_sets=(("qk_rope",), None), eager: bool = True,
             projections: bool = True) -> dict:
    """Each change alone against the compiled path (one model, handles sharing its weights), the compiled path
    measured again at the end (the base of each comparison is the mean of both: no drift of the card favours the
    first or the last), then the choice. `fused_sets`: the fused-kernel kinds tried (None: every kind)."""
    from ursa_core.model.fused_ops import KINDS
    out = {"case": list(case), "measured_steps": run.args.measured}
    compiled = handle(model, attention)
    out["attention"] = compiled.transformer.attn_implementation
    base = measure(run, compiled, case, "compiled", warm=2)
    out["compiled"] = strip(base)
    compiled.transformer.graph_steps = True
    graphs = measure(run, compiled, case, "compiled+graphs")
    compiled.transformer.graph_steps = False
    out["compiled+graphs"] = {**strip(graphs), "tokens_identical": torch.equal(graphs["tokens"], base["tokens"])}
    for kinds in fused_sets:
        kinds = tuple(kinds or KINDS)
        label = "compiled+fused_" + ("all" if set(kinds) == set(KINDS) else "+".join(kinds))
        compiled.transformer.set_fused_kernels(kinds)
        out[label] = {**strip(measure(run, compiled, case, label, warm=2)), "kinds": list(kinds)}
    compiled.transformer.set_fused_kernels(())
    if projections:
        out["compiled+fused_projections"] = strip(measure(run, handle(fused_projections(model), attention), case,
                                                          "compiled+fused_projections", warm=2))
    again = measure(run, compiled, case, "compiled (again)")
    run.keep["compiled"] = compiled
    out["compiled_again"] = {**strip(again), "tokens_identical": torch.equal(again["tokens"], base["tokens"])}
    if eager:
        out.update(eager_variants(run, model, case, attention))
    out["kept"] = choose(out)
    return out


def eager_variants(run: Run, model, case, attention: str) -> dict:
    """The eager path (the loader's default: no compile), alone and with every fused kernel (graphs: on the CPU
    smoke test only, where the fused kernels do not run)."""
    from ursa_core.model.fused_ops import KINDS
    eager = handle(model, attention, compile=False)
    base = measure(run, eager, case, "eager")
    out = {"eager": strip(base)}
    if run.fused_ok:
        eager.transformer.set_fused_kernels(KINDS)
        out["eager+fused_all"] = strip(measure(run, eager, case, "eager+fused_all"))
        return out
    eager.transformer.graph_steps = True
    graphed = measure(run, eager, case, "eager+graphs")
    out["eager+graphs"] = {**strip(graphed), "tokens_identical": torch.equal(graphed["tokens"], base["tokens"])}
    return out


def fused_projections(model):
    """The same weights with q/k/v and gate/up concatenated (larger GEMMs: the GEMM-shape change)."""
    import dataclasses

    from random_model import with_fused_projections
    return dataclasses.replace(model, transformer=with_fused_projections(model.transformer))


def choose(out: dict) -> dict:
    """The changes that pay alone (>= 1 % per guided step against the mean of the two compiled runs; graphs only
    when bit-identical) and the best fused-kernel set."""
    base = {"median_step_s": (out["compiled"]["median_step_s"] + out["compiled_again"]["median_step_s"]) / 2}
    fused = [k for k in out if k.startswith("compiled+fused_") and k != "compiled+fused_projections"]
    kept = {"graphs": faster(out["compiled+graphs"], base) and out["compiled+graphs"]["tokens_identical"],
            "fused": [], "projections": "compiled+fused_projections" in out
            and faster(out["compiled+fused_projections"], base), "base_step_s": round(base["median_step_s"], 5)}
    best = min(fused, key=lambda k: out[k]["median_step_s"], default=None)
    if best and faster(out[best], base):
        kept["fused"] = out[best]["kinds"]
    return kept


def best_handle(model, attention: str, kept: dict, **options):
    source = fused_projections(model) if kept.get("projections") else model
    return handle(source, attention, graphs=kept.get("graphs", False), fused=tuple(kept.get("fused", ())), **options)


def best_per_step(run: Run, model, case, attention: str, kept: dict) -> dict:
    """The kept changes together, guided and one-branch, with the 50-step total they extrapolate to."""
    best = run.keep["best"] = best_handle(model, attention, kept)
    guided = measure(run, best, case, "best", warm=2)
    single = measure(run, best, case, "best one-branch", guided=False, warm=2)
    return {"kept": kept, "guided": strip(guided), "one_branch": strip(single),
            "t2v50_extrapolated": extrapolate(guided["median_step_s"], single["median_step_s"],
                                              guided["overhead_s"], 50, 0.9)}


def prev_per_step(run: Run, kind: str, case, attention: str = "auto") -> dict:
    """The previous commit's compiled path: guided and one-branch per-step medians, the 50-step extrapolation."""
    steps = 4 + run.args.measured
    runs = [{"name": "guided", "steps": steps, "guidance": 7.0, "trunc": 1.0, "warm": 2},
            {"name": "one_branch", "steps": steps, "guidance": 1.0, "trunc": 1.0, "warm": 2}]
    result = worker_spec(run, kind, case, {"attention": attention, "compile": run.device.type == "cuda"}, runs)
    if "runs" in result:
        guided, single = result["runs"]["guided"], result["runs"]["one_branch"]
        result["t2v50_extrapolated"] = extrapolate(guided["median_step_s"], single["median_step_s"],
                                                   guided["overhead_s"], 50, 0.9)
    return result


def one_sequence(model, case):
    """One 49-frame input (random tokens, the benchmark prompt): ids, rotary tables, the rows the head reads."""
    from random_model import random_prompt_ids

    from ursa_core.model.sequence import build_sequence, predicting_positions
    from ursa_core.sampling.generate import plan
    from ursa_core.sampling.settings import GenerationSettings
    frames, height, width = case
    planned = plan(model, GenerationSettings(frames=frames, height=height, width=width, steps=2, shift=1.0), None)
    tokens = torch.randint(0, model.codebook_size, (1, *planned.latent_shape),
                           generator=torch.Generator().manual_seed(0))
    sequence = build_sequence(model, random_prompt_ids(model.config)[0], tokens)
    return sequence, predicting_positions(model.config, planned.active).to(model.device)


def rel_rms(out: torch.Tensor, ref: torch.Tensor, chunk: int = 1 << 26) -> float:
    """||out - ref|| / ||ref|| in float64, a chunk of elements at a time (a 49-frame clip's logits are 2 G values)."""
    out, ref = out.reshape(-1), ref.reshape(-1)
    error = total = 0.0
    for start in range(0, ref.numel(), chunk):
        a, b = out[start:start + chunk].double(), ref[start:start + chunk].double()
        error += float((a - b).pow(2).sum())
        total += float(b.pow(2).sum())
    return (error / total) ** 0.5


def summary(values: list[float]) -> dict:
    return {"mean": round(sum(values) / len(values), 5), "max": round(max(values), 5),
            "per_layer": [round(v, 5) for v in values]}


@torch.no_grad()
def fused_layer_error(model, case, attention: str) -> dict:
    """Each layer with every fused kernel against the same eager layer, fed the eager run's input (one kernel's error
    alone; random weights make end-to-end differences chaotic), and the one-forward logits error."""
    from ursa_core.model.fused_ops import KINDS
    sequence, keep = one_sequence(model, case)
    eager, fused = model.transformer.clone(), model.transformer.clone()
    for transformer in (eager, fused):
        transformer.set_attention(attention)
    fused.set_fused_kernels(KINDS)
    states: list = []
    reference = eager.visual_logits(eager.hidden_states(sequence.input_ids, sequence.cos, sequence.sin, keep,
                                                        collect=states))
    errors = [rel_rms(mine(states[i], sequence.cos, sequence.sin), theirs(states[i], sequence.cos, sequence.sin))
              for i, (mine, theirs) in enumerate(zip(fused.model.layers, eager.model.layers))]
    logits = fused.visual_logits(fused.hidden_states(sequence.input_ids, sequence.cos, sequence.sin, keep))
    return {"tokens": int(sequence.input_ids.shape[1]), "layer_rel_rms": summary(errors),
            "logits_rel_rms": round(rel_rms(logits, reference), 5)}


@torch.no_grad()
def attention_layer_error(model, case, backends=("sage2", "flash4")) -> dict:
    """Each backend against SDPA (bf16, exact attention), layer by layer on the SDPA run's inputs: the layer's state
    after o_proj and the residual, and its output after the MLP; plus the one-forward logits error."""
    from ursa_core.attention.backends import is_available
    sequence, keep = one_sequence(model, case)
    ids, cos, sin = sequence.input_ids, sequence.cos, sequence.sin
    transformer = model.transformer.clone()
    transformer.set_attention("sdpa")
    states: list = []
    reference = transformer.visual_logits(transformer.hidden_states(ids, cos, sin, keep, collect=states))
    out = {"tokens": int(ids.shape[1]), "reference": "sdpa"}
    for name in backends:
        if not is_available(name, model.device):
            out[name] = "not available"
            continue
        after, outputs = [], []
        for i, layer in enumerate(transformer.model.layers):
            x = states[i]
            attended = {}
            for backend in ("sdpa", name):
                transformer.set_attention(backend)
                attended[backend] = layer.self_attn.attend(*layer.attention_inputs(x, cos, sin))
            mine, theirs = attended[name], attended["sdpa"]
            after.append(rel_rms(x + layer.self_attn.output(mine), x + layer.self_attn.output(theirs)))
            outputs.append(rel_rms(layer.after_attention(x, mine), layer.after_attention(x, theirs)))
        transformer.set_attention(name)
        logits = transformer.visual_logits(transformer.hidden_states(ids, cos, sin, keep))
        out[name] = {"after_attention_residual": summary(after), "layer_output": summary(outputs),
                     "logits_rel_rms": round(rel_rms(logits, reference), 5)}
    return out


def block_swap(run: Run, model, case, attention: str, kept: dict, blocks=(16, 8, 2)) -> dict:
    """Guided steps with `blocks` layers resident and the rest streamed, against all resident, on the kept changes
    but without CUDA graphs (a streamed step copies layers from host memory: never captured). Every handle runs the
    resident handle's compiled halves (the same graphs: a slot is a layer like any other), so nothing recompiles;
    the resident handle is the `best` section's when there is one (already warm)."""
    resident = run.keep.get("best") or best_handle(model, attention, kept)
    graphs, resident.transformer.graph_steps = resident.transformer.graph_steps, False
    try:
        out = {"all_resident": strip(measure(run, resident, case, "all resident", warm=2))}
        for count in blocks:
            streamed = best_handle(model, attention, {**kept, "graphs": False}, compile=False, low_vram="stream",
                                   blocks_on_gpu=count)
            streamed.transformer.layer_call = resident.transformer.layer_call
            result = strip(measure(run, streamed, case, f"{count} resident"))
            result["x_all_resident"] = round(result["median_step_s"] / out["all_resident"]["median_step_s"], 4)
            out[f"resident_{count}"] = result
            del streamed
    finally:
        resident.transformer.graph_steps = graphs
    return out


def gap_profile(run: Run, model, case, attention: str, kept: dict, label: str) -> dict:
    """The GPU timeline of two steady guided steps (graphs included when kept): where a step's time goes, and how
    long the GPU idles between kernels (the host gap). The warm handle of the section named `label` when it ran."""
    profiled = run.keep.get(label)
    if profiled is None:
        profiled = best_handle(model, attention, kept)
        measure(run, profiled, case, f"{label} warm-up", warm=2)
    return profile_steps(profiled, case, Path(tempfile.mkdtemp()) / f"{label}.json")


def attention_probe(device, seq: int = 33_601, reps: int = 10) -> dict:
    """ms per attention call of a clip's shape (2 branches, 16 q / 8 kv heads, head_dim 128) in the layout the model
    hands over, for every available backend, and its error against SDPA on QK-normed inputs (logit std ~9)."""
    from ursa_core.attention import backends
    gen = torch.Generator(device=device).manual_seed(0)

    def make(heads, normed):
        x = torch.randn(2, seq, heads, 128, device=device, generator=gen)
        if normed:
            x = 3 * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))
        return x.to(torch.bfloat16).transpose(1, 2)
    q, k, v = make(16, True), make(8, True), make(8, False)
    reference = backends.sdpa(q, k, v).float()
    out = {"tokens": seq}
    for name in ("sdpa", "flash4", "sage2", "sage", "cudnn"):
        if not backends.is_available(name, device):
            out[name] = "not available"
            continue
        try:
            fn = backends.attention_function(name)
            result = fn(q, k, v)
            ms = milliseconds(lambda: fn(q, k, v), device, reps)
            out[name] = {"ms": round(ms, 3), "tflops": round(4 * 2 * 16 * seq * seq * 128 / ms / 1e9, 1),
                         "rel_rms_vs_sdpa": round(rel_rms(result, reference), 5)}
        except Exception as exc:  # noqa: BLE001 - a kernel this build lacks is reported
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return out


def milliseconds(fn, device, reps: int) -> float:
    """Mean time of fn() over `reps` calls after one warm-up: CUDA events on a GPU, the host clock elsewhere."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def full_run(run: Run, handle_, case, steps: int, label: str) -> dict:
    """A real run of `steps` steps (CFG 7, trunc 0.9) after a 3-step warm-up that compiles both batch shapes."""
    spec = {"name": label, "steps": steps, "guidance": 7.0, "trunc": 0.9, "warm": 3, "warm_trunc": 0.5}
    result = strip(run_once(handle_, case, spec, run.monitor))
    run.log(f"  {label}: total {result['total_s']:.2f} s for {steps} steps, peak {result.get('peak_alloc_gib')} GiB")
    return result


def prev_full_run(run: Run, kind: str, case, steps: int, label: str) -> dict:
    runs = [{"name": label, "steps": steps, "guidance": 7.0, "trunc": 0.9, "warm": 3, "warm_trunc": 0.5}]
    return worker_spec(run, kind, case, {"attention": run.attention, "compile": run.device.type == "cuda"}, runs)


def wait_for(path: str | None, limit_s: float) -> str:
    """Wait (up to limit_s) for a marker file another process writes when it is done (the sage2 build)."""
    if not path:
        return "no marker"
    deadline = time.perf_counter() + limit_s
    while not Path(path).exists() and time.perf_counter() < deadline:
        time.sleep(2)
    import importlib
    importlib.invalidate_caches()  # the package may have appeared on sys.path after this process started
    return Path(path).read_text().strip() if Path(path).exists() else "not done in time"


def free() -> None:
    """Give the memory of what the caller dropped back to the device (the next section measures its own peak)."""
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def call_a(run: Run, big: str = "fsq", small: str | None = "fsq-0.6b", case=CASES["t2v49"]) -> None:
    """No FA4 on the machine: the changes on the default attention, block swap, the 0.6B shape (`small`)."""
    g = run.per_step
    model = make_model(big, run.device)
    fused_sets = (("qk_rope",), None) if run.fused_ok else ()
    variants_result = run.section("variants", 160, lambda: variants(run, model, case, run.attention, fused_sets))
    kept = (variants_result or {}).get("kept", {"graphs": False, "fused": [], "projections": False})
    if run.fused_ok:
        run.section("fused_layer_error", 15, lambda: fused_layer_error(model, case, best_attention(run)))
    run.section("best", 25 + 7 * (g(True) + g(False)), lambda: best_per_step(run, model, case, run.attention, kept))
    run.section("prev", 45 + 7 * (g(True) + g(False)), lambda: prev_per_step(run, big, case))
    run.section("gap_profile_compiled", 12 + 10 * g(True),
                lambda: gap_profile(run, model, case, run.attention, {}, "compiled"))
    run.section("gap_profile_best", 12 + 10 * g(True),
                lambda: gap_profile(run, model, case, run.attention, kept, "best"))
    run.section("block_swap", 15 + 30 * g(True), lambda: block_swap(run, model, case, run.attention, kept))
    run.keep.clear()
    del model
    free()
    if small is None:
        return
    model = make_model(small, run.device)
    run.section("best_0.6b", 30 + 5 * g(True), lambda: best_per_step(run, model, case, run.attention, kept))
    run.section("prev_0.6b", 45 + 5 * g(True), lambda: prev_per_step(run, small, case))
    run.section("block_swap_0.6b", 20 + 12 * g(True),
                lambda: block_swap(run, model, case, run.attention, kept, blocks=(8,)))


def call_b(run: Run, big: str = "fsq", image: str = "ibq", case=CASES["t2v49"], image_case=CASES["t2i1024"],
           steps: int = 50, image_steps: int = 25, small: str | None = "fsq-0.6b") -> None:
    """FA4 (and sage2) installed: kernels, the changes on FA4, the headline totals, 8-bit attention, T2I."""
    probe = run.section("attention_kernels", 20, lambda: attention_probe(run.device, seq=case_tokens(case)))
    flash4 = (probe or {}).get("flash4")
    run.attention = "flash4" if isinstance(flash4, dict) and "ms" in flash4 else "sdpa"  # never a broken install
    run.report["attention"] = run.attention
    model = make_model(big, run.device)
    result = run.section("variants", 60, lambda: variants(run, model, case, run.attention, fused_sets=(
        (None,) if run.fused_ok else ()), eager=False, projections=False))
    kept = (result or {}).get("kept", {"graphs": False, "fused": [], "projections": False})
    run.section("headline_prev", 100, lambda: prev_full_run(run, big, case, steps, f"t2v_{steps}"))
    best = best_handle(model, run.attention, kept)
    run.section("headline_new", 80, lambda: {"kept": kept, "attention": best.transformer.attn_implementation,
                                               **full_run(run, best, case, steps, f"t2v_{steps}")})
    run.report["sage2_build"] = wait_for(run.args.wait_for, max(0.0, min(240.0, run.left() - 150)))
    run.section("sage2_layer_error", 20, lambda: attention_layer_error(model, case, run.error_backends))
    run.section("sage2", 60, lambda: sage2_full_run(run, best, case, steps))
    run.keep.clear()
    del best, model  # the T2I runs measure their own peak memory
    free()
    run.section("t2i_prev", 50, lambda: prev_full_run(run, image, image_case, image_steps, f"t2i_{image_steps}"))
    run.section("t2i_new", 60, lambda: t2i_new(run, kept, image, image_case, image_steps))
    if small is not None:  # the 0.6B shape on FA4 too, when time is left (call a measured it on the default kernel)
        model = make_model(small, run.device)
        run.section("best_0.6b", 60, lambda: best_per_step(run, model, case, run.attention, kept))
        run.section("prev_0.6b", 50, lambda: prev_per_step(run, small, case, run.attention))


def call_c(run: Run, big: str = "fsq", case=CASES["t2v49"], steps: int = 50) -> None:
    """sage2 measured again after call b: CUDA graphs did not capture its kernel (a replayed guided step took 0.30 s,
    its attention left out), so its steps now run eagerly (runtime/graphs.unsupported). Its 50-step total beside the
    exact path's on the same kernel set (call b's kept changes), in one run."""
    kept = {"graphs": True, "fused": ["norm", "qk_rope", "swiglu"], "projections": False}   # call b's choice
    model = make_model(big, run.device)
    best = best_handle(model, run.attention, kept)
    run.report["attention"] = best.transformer.attn_implementation
    if not os.environ.get("BENCH_SAGE2_ONLY"):   # set when the exact run was already measured in this lease
        run.section("c_exact", 80, lambda: {"kept": kept, "attention": best.transformer.attn_implementation,
                                            **full_run(run, best, case, steps, f"t2v_{steps}")})
    run.report["sage2_build"] = wait_for(run.args.wait_for, max(0.0, min(240.0, run.left() - 90)))
    run.section("c_sage2_layer_error", 20, lambda: attention_layer_error(model, case, run.error_backends[:1]))
    run.section("c_sage2", 60, lambda: sage2_full_run(run, best, case, steps))


def case_tokens(case) -> int:
    """Sequence length of a clip of the FSQ/IBQ checkpoints: 320 prompt tokens, BOV, the latent tokens."""
    frames, height, width = case
    latent = (1 + (frames - 1) // 4) * (height // 8) * (width // 8) if frames > 1 else (height // 16) * (width // 16)
    return 321 + latent


def sage2_full_run(run: Run, best, case, steps: int) -> dict:
    from ursa_core.attention.backends import is_available
    if not is_available("sage2", run.device):
        return {"skipped": "sage2 is not available (not built, or not an SM90 GPU)"}
    best.transformer.set_attention("sage2")
    try:
        return {"attention": "sage2", **full_run(run, best, case, steps, f"t2v_{steps} sage2")}
    finally:
        best.transformer.set_attention(best_attention(run))


def best_attention(run: Run) -> str:
    from ursa_core.attention.backends import resolve
    return resolve(run.attention, run.device)


def t2i_new(run: Run, kept: dict, kind: str, case, steps: int) -> dict:
    """T2I: the kept changes, and the compiled path alone (what the changes are worth on a short sequence)."""
    model = make_model(kind, run.device)
    best = full_run(run, best_handle(model, run.attention, kept), case, steps, f"t2i_{steps} best")
    out = {"kept": kept, "best": best}
    if kept.get("graphs") or kept.get("fused") or kept.get("projections"):
        out["compiled"] = full_run(run, handle(model, run.attention), case, steps, f"t2i_{steps} compiled")
    return out


def call_quick(run: Run) -> None:
    """Both calls' sections on the tiny model on the CPU (no compile there; fused kernels only under Triton's
    interpreter), with a budget-exceeding section to show the skip."""
    run.error_backends = ("math",)  # an exact backend the CPU has stands in for sage2 / flash4
    tiny = CASES["tiny"]
    call_a(run, big="tiny", small=None, case=tiny)  # the 0.6B sections run the same code as the 1.7B ones
    call_b(run, big="tiny", image="tiny", case=tiny, image_case=tiny, steps=5, image_steps=4, small=None)
    call_c(run, big="tiny", case=tiny, steps=5)
    run.section("too_big", 1e6, lambda: {})
