"""Low-VRAM mode: decoder layers live in pinned CPU memory and stream through two GPU slots.

While layer i computes on the default stream, layer i+1's weights are copied into the other slot on a side stream,
so the copy hides behind compute. Only the embeddings, final norm, lm_head and two layers are resident.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class LayerStreamer:
    """A `layer_runner` for URSATransformer (see modeling_ursa.URSATransformer.hidden_states)."""

    def __init__(self, layers: nn.ModuleList, device: torch.device):
        self.device = torch.device(device)
        self.host = [[p.detach().cpu() for p in layer.parameters()] for layer in layers]
        if self.device.type == "cuda":
            self.host = [[t.pin_memory() for t in params] for params in self.host]
        self.slots = [copy.deepcopy(layers[0]).to(self.device) for _ in range(min(2, len(layers)))]
        cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.ready = [torch.cuda.Event() if cuda else None for _ in self.slots]
        self.free = [torch.cuda.Event() if cuda else None for _ in self.slots]

    def resident_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for slot in self.slots for p in slot.parameters())

    def _load(self, index: int, slot: int) -> None:
        """Copy layer `index` into `slot` (asynchronously on CUDA, after the slot's previous layer finished)."""
        params = list(self.slots[slot].parameters())
        if self.copy_stream is None:
            for dst, src in zip(params, self.host[index]):
                dst.data.copy_(src)
            return
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[slot])
            for dst, src in zip(params, self.host[index]):
                dst.data.copy_(src, non_blocking=True)
            self.ready[slot].record(self.copy_stream)

    def __call__(self, transformer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 collect: list | None = None) -> torch.Tensor:
        count = len(self.host)
        if self.copy_stream is not None:
            for event in self.free:  # nothing uses the slots before the first layer
                event.record(torch.cuda.current_stream(self.device))
        self._load(0, 0)
        for i in range(count):
            slot = i % len(self.slots)
            if i + 1 < count:
                self._load(i + 1, (i + 1) % len(self.slots))
            if self.copy_stream is not None:
                torch.cuda.current_stream(self.device).wait_event(self.ready[slot])
            x = self.slots[slot](x, cos, sin)
            if collect is not None:
                collect.append(x)
            if self.copy_stream is not None:
                self.free[slot].record(torch.cuda.current_stream(self.device))
        return x


def enable_low_vram(transformer: nn.Module, device: str | torch.device) -> LayerStreamer:
    """Move everything but the decoder layers to `device` and stream the layers from pinned host memory."""
    device = torch.device(device)
    layers = transformer.model.layers
    streamer = LayerStreamer(layers, device)
    layers.to("meta")  # the host copies in the streamer are the only ones left
    transformer.model.embed_tokens.to(device)
    transformer.model.norm.to(device)
    transformer.lm_head.to(device)
    transformer.layer_runner = streamer
    return streamer
