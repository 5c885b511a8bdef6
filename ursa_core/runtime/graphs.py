"""Sampling steps replayed as CUDA graphs (the `cuda_graphs` speed option), and the host-to-device transfer of a
step's inputs.

A step's shapes are fixed within a clip, and everything that varies from step to step enters as a tensor: the tokens,
the clocks of the sampled tokens, the uniforms (drawn on the CPU, so a seed gives the same numbers on every device).
So a whole step (transformer pass, guidance, head, sampler) can be captured once and replayed: the replay runs the
kernels the capture recorded on the same shapes and inputs as the eager step, so the tokens are bit-identical, and
the host's work between kernels (Python, dispatch, launches) goes away. The callback, the uniforms' draw and the
gathering of tokens stay outside, between steps, as in the eager loop.
"""
from __future__ import annotations

import logging
from typing import Callable, Hashable, Optional, Sequence

import torch

from ..attention.backends import is_capturable

log = logging.getLogger(__name__)

Step = Callable[..., tuple]


def to_device(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Host tensors on `device`, copied without stalling the host: from pinned memory, asynchronously (a plain copy
    from pageable memory waits for every kernel queued before it)."""
    if device.type != "cuda":
        return tuple(t.to(device) for t in tensors)
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)


def unsupported(transformer, runner, device: torch.device) -> Optional[str]:
    """Why steps cannot be captured here, or None."""
    if device.type != "cuda":
        return f"steps run on {device}, not a CUDA GPU"
    if transformer.layer_fetch is not None:   # a fetch says why it cannot be captured (LoRA merges, block swap)
        return getattr(transformer.layer_fetch, "not_capturable",
                       "block swap copies layers from host memory during a step")
    if not is_capturable(transformer.attn_implementation):
        return f"the {transformer.attn_implementation} attention kernel is not captured by CUDA graphs"
    if transformer.model.embed_tokens.weight.device != transformer.lm_head.weight.device:
        return "the token embedding table lives on another device than the layers (text_device)"
    if not getattr(runner, "capturable", False):
        return "the steps are shared between devices (collectives inside a step)"
    return None


def eager(key: Hashable, step: Step, inputs: Sequence[torch.Tensor]) -> tuple:
    """How a step runs without graphs."""
    return step(*inputs)


class StepGraphs:
    """The steps of one clip, one CUDA graph per kind of step (`key`: e.g. the branch count and whether it is the
    last step). A kind's first step runs eagerly on the capture stream: the warm-up every kernel needs before capture
    (compilation, autotuning, library handles and workspaces). Its second step is captured, then replayed, as are the
    later ones. The kinds of a clip come in runs (guided steps, then unguided ones), so one graph is kept at a time:
    its memory is one step's. A kind whose capture fails (a kernel that cannot be captured) runs eagerly from then on.
    `__call__` returns the step's outputs; a replay's outputs are overwritten by the next replay."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.seen: set = set()
        self.failed: set = set()
        self.key = None
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: tuple = ()
        self.outputs: tuple = ()
        self.replays = 0

    def __call__(self, key: Hashable, step: Step, inputs: Sequence[torch.Tensor]) -> tuple:
        key = (key, tuple(tuple(t.shape) for t in inputs))
        if key == self.key:
            return self._replay(inputs)
        if key in self.failed:
            return step(*inputs)
        if key not in self.seen:
            self.seen.add(key)
            return self._warm_up(step, inputs)
        try:
            self._capture(key, step, inputs)
        except Exception as exc:  # noqa: BLE001 - any capture failure leaves this kind of step eager
            log.warning("URSA: a sampling step could not be captured as a CUDA graph (%s: %s); this kind of step "
                        "runs eagerly", type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            self.failed.add(key)
            self.release()
            return step(*inputs)
        return self._replay(inputs)

    def _warm_up(self, step: Step, inputs: Sequence[torch.Tensor]) -> tuple:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            outputs = step(*inputs)
        current.wait_stream(self.stream)
        for tensor in (*inputs, *outputs):  # used across the two streams
            tensor.record_stream(current)
            tensor.record_stream(self.stream)
        return outputs

    def _capture(self, key, step: Step, inputs: Sequence[torch.Tensor]) -> None:
        self.release()  # the previous kind's graph and its memory go first
        static = tuple(t.clone() for t in inputs)
        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        # thread_local: other threads of the process (a ComfyUI server's) may use CUDA while this one captures
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            outputs = step(*static)
        self.key, self.graph, self.inputs, self.outputs = key, graph, static, tuple(outputs)

    def _replay(self, inputs: Sequence[torch.Tensor]) -> tuple:
        for static, value in zip(self.inputs, inputs):
            static.copy_(value, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.outputs

    def release(self) -> None:
        """Drop the kept graph (its memory returns to the allocator)."""
        self.key, self.graph, self.inputs, self.outputs = None, None, (), ()
