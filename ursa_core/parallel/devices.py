"""Several devices in one process (ComfyUI runs a graph in one process): each device holds its own handle of the
model (its own weight copy, its own speed options), and work is shared two ways.

- **Branch split** (`BranchSplit`, one more sampling.runners.RunnerFactory): a guided step's two transformer
  branches run at the same time, the conditional one on the first handle, the unconditional one on the second; the
  unconditional hidden states come over to the first device, where guidance combines them. Unguided steps run on the
  first device alone. Tokens are those of one device: each branch runs the same forward the single-device batch
  runs for it, and guidance, the head and the jump happen on the first device as there.
- **Samples** (`generate_samples`): sample i of a batch is its own generation with seed + i, run on one device (or
  on a pair, branch split); the tokens of sample i are those of a single run of sample i, whatever the batch size
  or the number of devices.

Why threads. One eager forward of URSA-1.7B launches about 2 900 kernels at 49x320x512 (5 302 ATen calls, 2 436 of
them views: benchmarks/bench_split.py counts them on the meta device; docs/PERFORMANCE.md). CUDA queues only so many
launches per device before the launching call blocks, so one Python thread that enqueues device 0's whole forward
before device 1's would start device 1 late, once device 0 has drained most of its queue. A branch on another device
therefore runs in a thread of its own (PyTorch releases the GIL inside every operator, so both threads keep their
device busy); `launch="inline"` keeps the one-thread way, and the benchmark measures both on the GPU. Samples on
different devices always need threads: every step ends by reading the new tokens on the CPU, which waits for that
device.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, TypeVar

import torch

from .. import rules
from ..errors import InputError
from ..model.sequence import predicting_positions
from ..sampling.runners import SingleDeviceRunner

T = TypeVar("T")
LAUNCHES = ("threads", "inline")


def on_device(device: torch.device):
    """Make `device` current for the calling thread (CUDA's current device is per thread; a backend that asks for
    the current stream must get the stream of the device it computes on)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def run_together(calls: Sequence[Callable[[], T]], devices: Sequence[torch.device], launch: str = "threads") -> list[T]:
    """Every call with its device current; the first on this thread, the others on threads of their own
    (launch="threads") or after it on this one ("inline"). Returns the results in order once all have ended; an
    error is raised only then, so no device still computes for a failed step."""
    bound = _bound(calls, devices)
    if launch == "inline" or len(bound) == 1:
        return [call() for call in bound]
    workers = [_Worker(call) for call in bound[1:]]
    first = _outcome(bound[0])
    for worker in workers:
        worker.join()
    return _results([first] + [worker.outcome for worker in workers])


class _Stopped(Exception):
    """A call stops at its next step because another one failed or was cancelled."""


def _bound(calls: Sequence[Callable[[], T]], devices: Sequence[torch.device]) -> list[Callable[[], T]]:
    """The calls as the calling thread would run them: its grad and inference modes (per thread in torch; ComfyUI
    runs a whole prompt under inference_mode) and their device current."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def bind(call: Callable[[], T], device: torch.device) -> Callable[[], T]:
        def run() -> T:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad), on_device(device):
                return call()
        return run
    return [bind(call, device) for call, device in zip(calls, devices)]


def _outcome(call: Callable[[], T]) -> tuple[bool, object]:
    try:
        return True, call()
    except BaseException as exc:  # handed to the calling thread, which raises it once every call has ended
        return False, exc


def _results(outcomes: list[tuple[bool, object]]) -> list:
    """The values in order, or the first error (a call's own, before the stops it caused)."""
    errors = [value for ok, value in outcomes if not ok]
    if errors:
        raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
    return [value for _, value in outcomes]


class _Worker(threading.Thread):
    """One call on a thread of its own, started at once; `finished(outcome)` runs on that thread at its end."""

    def __init__(self, call: Callable[[], T], finished: Optional[Callable] = None):
        super().__init__(name="ursa-device", daemon=True)
        self.call, self.finished, self.outcome = call, finished, (False, _Stopped())
        self.start()

    def run(self) -> None:
        self.outcome = _outcome(self.call)
        if self.finished is not None:
            self.finished(self.outcome)


class BranchSplit:
    """The placement of a guided generation over two handles (sampling.runners.RunnerFactory): `generate` runs on
    the first (`model`), the unconditional branch on `second`, a handle of the same weights on another device (or
    the same one: two copies on one GPU, as the benchmark compares)."""

    def __init__(self, second, launch: str = "threads"):
        rules.choice("launch", launch, LAUNCHES)
        self.second, self.launch = second, launch

    def runner(self, model, plan) -> "BranchSplitRunner":
        return BranchSplitRunner(model, self.second, plan, self.launch)

    def describe(self) -> dict | None:
        return {"unconditional_device": str(self.second.device)}


class BranchSplitRunner(SingleDeviceRunner):
    """The branch runner of a BranchSplit: every active token is sampled on the first device, where a step of one
    branch runs as on a single device; a guided step runs its unconditional branch on the second at once."""

    capturable = False   # a guided step hands its unconditional branch to the second device: not one graph

    def __init__(self, model, second, plan, launch: str):
        positions = predicting_positions(model.config, plan.active)
        super().__init__(positions.to(model.device))
        self.second, self.launch = second.transformer, launch
        self.devices = (model.device, second.device)
        self.second_keep = positions.to(second.device)
        self.second_tables: Optional[tuple] = None  # the first device's rotary tables, copied once

    def hidden_states(self, transformer, ids, cos, sin):
        if len(ids) == 1:
            return super().hidden_states(transformer, ids, cos, sin)
        if self.second_tables is None:
            self.second_tables = cos.to(self.devices[1]), sin.to(self.devices[1])
        second_ids, (second_cos, second_sin) = ids[1].to(self.devices[1]), self.second_tables
        cond, uncond = run_together(
            [lambda: transformer.hidden_states(ids[0], cos, sin, self.keep),
             lambda: self.second.hidden_states(second_ids, second_cos, second_sin, self.second_keep)],
            self.devices, self.launch)
        return torch.stack([cond.flatten(0, 1), uncond.flatten(0, 1).to(cond.device)])


# --- samples ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplePlace:
    """Sample `sample` of a batch runs on `devices` (indices into the handles): one, or two for a branch split."""
    sample: int
    devices: tuple[int, ...]


def sample_rounds(samples: int, devices: int, guided: bool, strategy: str = "auto") -> list[list[SamplePlace]]:
    """Where each sample runs, in rounds that use every device at most once (a fixed plan: which device made a
    sample never depends on timing, so mixed GPUs still repeat their numbers run to run).

    samples: one device per sample. branches: a pair of devices per guided sample (its two branches at once).
    auto: one device per sample while a round fills every device; the last samples, if they would leave at least
    half of the devices idle, get a pair each. Unguided samples have one branch, so always one device each."""
    rules.choice("strategy", strategy, rules.DEVICE_STRATEGIES)
    pairs = guided and devices >= 2 and strategy != "samples"
    rounds, start = [], 0
    while start < samples:
        left = samples - start
        if pairs and (strategy == "branches" or left <= devices // 2):
            width, size = min(left, devices // 2), 2
        else:
            width, size = min(left, devices), 1
        rounds.append([SamplePlace(start + k, tuple(range(k * size, (k + 1) * size))) for k in range(width)])
        start += width
    return rounds


def sample_seed(seed: int, sample: int) -> int:
    """The seed of sample `sample` of a batch seeded `seed`: seed + sample (wrapping at 2^64), so a batch equals its
    samples run one by one with seeds seed, seed + 1, ..."""
    return (int(seed) + sample) % (rules.SEED_MAX + 1)


def run_places(calls: Sequence[Callable[[Callable], T]], devices: Sequence[torch.device],
               on_event: Optional[Callable] = None) -> list[T]:
    """Run `call(report)` for every place at once, each on a thread of its own; `report(event)`, called by a call
    after each of its steps, hands the event to this thread, which passes it to `on_event`: a front end's progress
    and cancel (ComfyUI's) run on the thread that runs the node. Once `on_event` raises or a call fails, every other
    call stops at its next step; the first error is raised when all have ended."""
    on_event = on_event or (lambda event: None)
    if len(calls) == 1:
        return [call() for call in _bound([lambda: calls[0](on_event)], devices)]
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def report(event) -> None:
        if stop.is_set():
            raise _Stopped()
        events.put(event)

    def finished(outcome) -> None:
        if not outcome[0]:
            stop.set()
        events.put(_DONE)
    workers = [_Worker(call, finished) for call in _bound([lambda c=c: c(report) for c in calls], devices)]
    try:
        running = len(workers)
        while running:
            event = events.get()
            if event is _DONE:
                running -= 1
            elif not stop.is_set():
                on_event(event)
    except BaseException:
        stop.set()
        for worker in workers:
            worker.join()
        raise
    return _results([worker.outcome for worker in workers])


_DONE = object()


def placed(handles: Sequence, place: SamplePlace) -> tuple:
    """(the handle `generate` runs on, its placement: a BranchSplit over the place's pair, or None) of a place."""
    first = handles[place.devices[0]]
    return first, BranchSplit(handles[place.devices[1]]) if len(place.devices) == 2 else None


def one_sample(handles: Sequence, guided: bool, strategy: str = "auto") -> tuple:
    """Where a single generation runs on `handles` (the extender's windows): `placed` of its one place."""
    return placed(handles, sample_rounds(1, len(handles), guided, strategy)[0][0])


def generate_samples(handles: Sequence, count: int, settings, *, strategy: str = "auto",
                     callback: Optional[Callable] = None, given_tokens: Optional[torch.Tensor] = None,
                     **generate_args) -> list:
    """`count` samples of one generation spread over `handles` (URSAModel handles, one per device):
    sample i is `generate(handle, settings with seed + i, ...)` on the device(s) `sample_rounds` gives it.
    `callback(sample, StepInfo)` after every step of any sample (on this thread; raising cancels every sample);
    `given_tokens` [1 | count, T, h, w]: shared, or row i for sample i. Returns the Generations in sample order."""
    from ..sampling.generate import generate

    if given_tokens is not None and given_tokens.shape[0] not in (1, count):
        raise InputError(f"given tokens hold {given_tokens.shape[0]} samples but the batch has {count}: give 1 "
                         f"(shared by every sample) or {count}")
    results: list = [None] * count
    relay = None if callback is None else (lambda event: callback(*event))
    for round_ in sample_rounds(count, len(handles), settings.max_branches == 2, strategy):
        def call(place: SamplePlace) -> Callable[[Callable], object]:
            first, split = placed(handles, place)
            given = given_tokens if given_tokens is None or given_tokens.shape[0] == 1 else \
                given_tokens[place.sample:place.sample + 1]
            seed = sample_seed(settings.seed, place.sample)

            def run(report: Callable) -> object:
                return generate(first, settings=replace(settings, seed=seed), given_tokens=given, parallel=split,
                                callback=lambda info: report((place.sample, info)), **generate_args)
            return run
        done = run_places([call(p) for p in round_], [handles[p.devices[0]].device for p in round_], relay)
        for place, generation in zip(round_, done):
            results[place.sample] = generation
    return results
