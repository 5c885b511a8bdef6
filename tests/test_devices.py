"""Several devices in one process (ursa_core.parallel.devices), with two weight copies on the CPU standing in for two
GPUs: the branch split and the sample split give one device's tokens (fp32), every sample keeps its own seed,
and a cancel or a failure on any device stops every device."""
import copy
import dataclasses
import threading

import pytest
import torch

from parallel_fixtures import SAMPLING
from ursa_core.errors import InputError
from ursa_core.parallel.devices import (BranchSplit, SamplePlace, generate_samples, run_places, run_together,
                                        sample_rounds, sample_seed)
from ursa_core.path.schedule import FrameSchedule
from ursa_core.sampling.generate import generate
from ursa_core.sampling.settings import GenerationSettings

SETTINGS = GenerationSettings(**SAMPLING)  # 5 frames, guidance 5 until t = 0.7: guided steps and an unguided one


def second_copy(model):
    """Another handle with a weight copy of its own (what URSA Devices gives each listed device)."""
    return dataclasses.replace(model, transformer=copy.deepcopy(model.transformer))


class CountingForwards:
    """Counts the forwards a transformer runs and on which threads."""

    def __init__(self, transformer):
        self.calls, self.threads, self.modes, self._forward = 0, set(), set(), transformer.hidden_states
        transformer.hidden_states = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        self.modes.add((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return self._forward(*args, **kwargs)


def fox(model, **kw) -> torch.Tensor:
    """The tokens of the test's generation on `model` (keywords: generate's)."""
    return generate(model, "a red fox", settings=SETTINGS, **kw).tokens


@pytest.fixture(scope="module")
def single(tiny_model):
    return generate(tiny_model, "a red fox", settings=SETTINGS).tokens


@pytest.mark.parametrize("launch", ["threads", "inline"])
def test_branch_split_gives_the_single_device_tokens(tiny_model, single, launch):
    second = second_copy(tiny_model)
    counter = CountingForwards(second.transformer)
    run = generate(tiny_model, "a red fox", settings=SETTINGS, parallel=BranchSplit(second, launch))
    assert torch.equal(run.tokens, single)
    # 4 steps run (step 0 jumps nowhere and is skipped), 3 of them guided: the second copy ran their uncond branch
    assert counter.calls == 3
    assert (counter.threads == {"ursa-device"}) == (launch == "threads")
    assert run.settings["parallel"] == {"unconditional_device": "cpu"}


def test_branch_split_really_uses_the_second_copy(tiny_model, single):
    broken = second_copy(tiny_model)
    broken.transformer.model.layers[0].mlp.down_proj.weight.data.mul_(-3.0)
    assert not torch.equal(fox(tiny_model, parallel=BranchSplit(broken)), single)


def test_unguided_runs_never_touch_the_second_copy(tiny_model):
    second = second_copy(tiny_model)
    counter = CountingForwards(second.transformer)
    split = fox(tiny_model, guidance=1.0, parallel=BranchSplit(second))
    assert counter.calls == 0 and torch.equal(split, fox(tiny_model, guidance=1.0))


def test_branch_split_with_given_frames_and_a_schedule(tiny_model):
    latent = tiny_model.geometry.latent_shape(9, 32, 32)
    given = torch.randint(0, tiny_model.codebook_size, (1, *latent), generator=torch.Generator().manual_seed(2))
    args = dict(frames=9, schedule=FrameSchedule.keyframes(3, {0: 1.0, 2: 0.6}), given_tokens=given)
    one = fox(tiny_model, **args)
    split = fox(tiny_model, parallel=BranchSplit(second_copy(tiny_model)), **args)
    assert torch.equal(one, split) and torch.equal(split[:, 0], given[:, 0])


@pytest.mark.parametrize("strategy", ["auto", "samples", "branches"])
def test_samples_over_two_devices_equal_their_single_runs(tiny_model, strategy):
    handles = [tiny_model, second_copy(tiny_model)]
    runs = generate_samples(handles, 3, SETTINGS, strategy=strategy, prompt="a red fox")
    for i, run in enumerate(runs):   # sample i is seed + i, whatever the batch size, the devices or the strategy
        alone = generate(tiny_model, "a red fox", settings=SETTINGS, seed=SETTINGS.seed + i)
        assert run.seed == SETTINGS.seed + i and torch.equal(run.tokens, alone.tokens)
    assert not torch.equal(runs[0].tokens, runs[1].tokens)


def test_samples_run_on_their_planned_devices_at_once(tiny_model):
    handles = [tiny_model, second_copy(tiny_model)]
    counters = [CountingForwards(h.transformer) for h in handles]
    generate_samples(handles, 2, SETTINGS, strategy="samples", prompt="a red fox")
    assert [c.calls for c in counters] == [4, 4]          # each sample's 4 forwards on its own copy
    assert counters[0].threads == counters[1].threads == {"ursa-device"}  # both on worker threads, side by side


def test_sample_rows_of_given_tokens_follow_their_sample(tiny_model):
    latent = tiny_model.geometry.latent_shape(5, 32, 32)
    given = torch.randint(0, tiny_model.codebook_size, (2, *latent), generator=torch.Generator().manual_seed(4))
    schedule = FrameSchedule.image_to_video(2)
    runs = generate_samples([tiny_model, second_copy(tiny_model)], 2, SETTINGS, prompt="a red fox",
                            schedule=schedule, given_tokens=given)
    for i, run in enumerate(runs):
        assert torch.equal(run.tokens[:, 0], given[i:i + 1, 0])


@pytest.mark.parametrize("samples, devices, guided, strategy, expected", [
    (1, 2, True, "auto", [[(0, (0, 1))]]),
    (2, 2, True, "auto", [[(0, (0,)), (1, (1,))]]),
    (3, 2, True, "auto", [[(0, (0,)), (1, (1,))], [(2, (0, 1))]]),
    (3, 2, False, "auto", [[(0, (0,)), (1, (1,))], [(2, (0,))]]),
    (2, 4, True, "auto", [[(0, (0, 1)), (1, (2, 3))]]),
    (5, 4, True, "auto", [[(0, (0,)), (1, (1,)), (2, (2,)), (3, (3,))], [(4, (0, 1))]]),
    (3, 2, True, "branches", [[(0, (0, 1))], [(1, (0, 1))], [(2, (0, 1))]]),
    (1, 2, True, "samples", [[(0, (0,))]]),
    (2, 1, True, "branches", [[(0, (0,))], [(1, (0,))]]),
])
def test_sample_rounds(samples, devices, guided, strategy, expected):
    rounds = sample_rounds(samples, devices, guided, strategy)
    assert rounds == [[SamplePlace(s, d) for s, d in r] for r in expected]


def test_sample_seeds_wrap_at_the_seed_range():
    assert sample_seed(7, 3) == 10 and sample_seed(2 ** 64 - 1, 1) == 0


def test_cancel_stops_every_device(tiny_model):
    handles = [tiny_model, second_copy(tiny_model)]
    counters = [CountingForwards(h.transformer) for h in handles]
    seen = []

    def cancel_after_three(sample, info):
        seen.append(sample)
        if len(seen) == 3:
            raise KeyboardInterrupt("cancelled")
    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        generate_samples(handles, 2, SETTINGS, strategy="samples", prompt="a red fox", callback=cancel_after_three)
    # each sample stopped at its next step: far from the 2 x 5 steps of a whole run
    assert sum(c.calls for c in counters) <= 5 and len(seen) == 3
    assert threading.active_count() == before


def test_a_failing_device_stops_the_others_with_its_own_error(tiny_model):
    handles = [tiny_model, second_copy(tiny_model)]
    healthy = CountingForwards(handles[0].transformer)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device 1 fell off the bus")
    handles[1].transformer.hidden_states = broken
    with pytest.raises(RuntimeError, match="fell off the bus"):
        generate_samples(handles, 2, SETTINGS, strategy="samples", prompt="a red fox")
    assert healthy.calls <= 2   # the healthy sample stopped at its next step


def test_cancel_during_a_branch_split_run(tiny_model):
    steps = []

    def cancel(info):
        steps.append(info.step)
        if len(steps) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fox(tiny_model, parallel=BranchSplit(second_copy(tiny_model)), callback=cancel)
    assert steps == [0, 1]


def test_run_together_raises_only_after_every_call_ended():
    ended = threading.Event()

    def slow():
        ended.wait(0.2)
        ended.set()
        return 1

    def fails():
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        run_together([fails, slow], [torch.device("cpu")] * 2)
    assert ended.is_set()


def test_run_places_relays_events_on_the_calling_thread():
    relayed = []

    def place(name):
        def call(report):
            for step in range(3):
                report((name, step))
            return name
        return call
    results = run_places([place("a"), place("b")], [torch.device("cpu")] * 2,
                         lambda event: relayed.append((threading.current_thread().name, event)))
    assert results == ["a", "b"]
    assert {thread for thread, _ in relayed} == {threading.current_thread().name} and len(relayed) == 6


def test_bad_launch_and_strategy_are_one_line():
    with pytest.raises(InputError, match="launch='fast' is not allowed"):
        BranchSplit(None, launch="fast")
    with pytest.raises(InputError, match="strategy='ring' is not allowed"):
        sample_rounds(2, 2, True, "ring")


def test_device_list_names_a_bare_cuda_as_cuda_0(monkeypatch):
    """`cuda` is cuda:0 in URSA Devices' list (the CPU machine stands in: rules.device is told a GPU exists)."""
    from ursa_core import rules

    monkeypatch.setattr(rules, "device", lambda name: torch.device(name))
    assert rules.device_list("cuda, cpu, cuda:1") == [torch.device("cuda", 0), torch.device("cpu"),
                                                      torch.device("cuda", 1)]


def test_split_benchmark_cpu_path(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_split.py"
    out = tmp_path / "split.json"
    done = subprocess.run([sys.executable, str(bench), "--quick", "--steps", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"single", "split_one_gpu_threads", "split_one_gpu_inline"}
    for mode in report["modes"].values():
        assert mode["tokens_equal_to_single"] == 1.0 and mode["total_s"] > 0 and mode["median_step_s"] > 0
    assert report["samples_two_devices"]["tokens_equal"] is True
    launches = report["launches"]   # the reason for a thread per device: thousands of launches per forward
    assert launches["layers"] == 28 and launches["launching_calls"] > 1000
    assert launches["aten_calls"] == launches["views"] + launches["launching_calls"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own import-time warnings
def test_branch_split_with_every_speed_option_on_each_handle(tiny_model):
    """Each device's handle carries the loader's options of its own (runtime/speed.with_speed): fp8 storage, block
    swap and compiled layers (aot_eager, traced on the worker thread too) give the one-handle tokens."""
    from ursa_core.runtime.compiled import compile_layers
    from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed

    options = SpeedOptions(weight_dtype="fp8_e4m3fn", low_vram="stream", blocks_on_gpu=1)

    def handle():
        made = with_speed(tiny_model, options, Placement.single("cpu"))
        compile_layers(made.transformer, backend="aot_eager")
        return made
    first, second = handle(), handle()
    assert first.transformer.layer_fetch is not second.transformer.layer_fetch   # a streamer per device
    one = generate(first, "a red fox", settings=SETTINGS).tokens
    counter = CountingForwards(second.transformer)
    split = generate(first, "a red fox", settings=SETTINGS, parallel=BranchSplit(second)).tokens
    assert torch.equal(split, one) and counter.calls == 3 and counter.threads == {"ursa-device"}


def test_threads_run_in_the_callers_inference_mode(tiny_model):
    """ComfyUI runs a whole prompt under torch.inference_mode, which torch keeps per thread: the device threads run
    in it too (as the node's thread does), with block swap refilling its slots there."""
    from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed

    with torch.inference_mode():
        handles = [with_speed(tiny_model, SpeedOptions(low_vram="stream"), Placement.single("cpu")) for _ in range(2)]
        counters = [CountingForwards(h.transformer) for h in handles]
        runs = generate_samples(handles, 2, SETTINGS, strategy="samples", prompt="a red fox")
        split = fox(handles[0], parallel=BranchSplit(handles[1]))
    assert counters[1].threads == {"ursa-device"} and counters[1].modes == {(True, False)}
    assert torch.equal(runs[0].tokens, fox(tiny_model)) and torch.equal(split, fox(tiny_model))
