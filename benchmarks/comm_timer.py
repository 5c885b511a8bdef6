"""Time the collectives a parallel generation makes, from outside the product code: while `timed` is active,
torch.distributed's all_gather and all_to_all_single (the only collectives ursa_core's parallel runner and the
Ulysses backend call, always through the `torch.distributed` module) are wrapped by a timer.

CUDA events on GPUs (NCCL runs asynchronously: only events on the stream see its end; read once, at the end), wall
time on the CPU.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist

TIMED = ("all_gather", "all_to_all_single")


class CommTimer:
    def __init__(self):
        self.events: list = []
        self.cpu_seconds = 0.0
        self.calls = 0

    def run(self, collective, *args, **kwargs):
        self.calls += 1
        tensors = [t for a in args for t in (a if isinstance(a, list) else [a]) if isinstance(t, torch.Tensor)]
        if tensors and tensors[0].is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = collective(*args, **kwargs)
            end.record()
            self.events.append((start, end))
            return out
        began = time.perf_counter()
        out = collective(*args, **kwargs)
        self.cpu_seconds += time.perf_counter() - began
        return out

    def seconds(self) -> float:
        if self.events:
            torch.cuda.synchronize()
        return self.cpu_seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1000.0

    @contextlib.contextmanager
    def timed(self):
        """Every collective of TIMED called inside the block goes through `run`."""
        originals = {name: getattr(dist, name) for name in TIMED}
        for name, collective in originals.items():
            setattr(dist, name, lambda *a, _c=collective, **k: self.run(_c, *a, **k))
        try:
            yield self
        finally:
            for name, collective in originals.items():
                setattr(dist, name, collective)
