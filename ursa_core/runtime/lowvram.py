"""Low-VRAM mode (block swap): the first `blocks_on_gpu` decoder layers stay resident, the others live in (pinned)
host memory and stream through two device slots.

Streaming is a layer *fetch* (URSATransformer.decoder_layers), not a loop of its own: while layer i computes on the
default stream, layer i+1's weights are copied into the other slot on a side stream, so the copy hides behind
compute; however a layer then runs (eagerly, or through the compiled halves of runtime/compiled.py) is the caller's
business, so block swap and compile combine. Resident: embeddings, final norm, lm_head, the kept layers and the two
slots. The streamed layers leave the module tree (only their host copies remain), so whoever moves or measures the
transformer (ComfyUI's ModelPatcher, `.to()`) sees exactly what occupies the device; the slots are a submodule and
move with it.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

SLOTS = 2


def layer_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """Everything a layer computes with, in a fixed order: parameters, then buffers (e.g. fp8 weight scales)."""
    return list(layer.parameters()) + list(layer.buffers())


class LayerStreamer:
    """The `layer_fetch` of a block-swapped URSATransformer (see modeling_ursa.URSATransformer.decoder_layers)."""

    def __init__(self, streamed: list[nn.Module], slots: nn.ModuleList):
        self.host = [[t.detach().cpu() for t in layer_tensors(layer)] for layer in streamed]
        if torch.cuda.is_available():  # pinned memory makes the host-to-device copies asynchronous
            self.host = [[t.pin_memory() for t in params] for params in self.host]
        self.slots = slots
        self._streams: dict[torch.device, tuple] = {}

    def resident_bytes(self) -> int:
        """Bytes of the two slots (the streamed layers' share of device memory)."""
        return sum(t.numel() * t.element_size() for slot in self.slots for t in layer_tensors(slot))

    def host_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for params in self.host for t in params)

    def _cuda_sync(self, device: torch.device):
        """(copy stream, ready events, free events) for `device`; None on the CPU (copies are synchronous)."""
        if device.type != "cuda":
            return None
        if device not in self._streams:
            self._streams[device] = (torch.cuda.Stream(device), [torch.cuda.Event() for _ in self.slots],
                                     [torch.cuda.Event() for _ in self.slots])
        return self._streams[device]

    def _load(self, index: int, slot: int, sync) -> None:
        """Copy streamed layer `index` into `slot` (asynchronously on CUDA, after the slot's previous layer ran)."""
        params = layer_tensors(self.slots[slot])
        if sync is None:
            for dst, src in zip(params, self.host[index]):
                dst.data.copy_(src)
            return
        copy_stream, ready, free = sync
        with torch.cuda.stream(copy_stream):
            copy_stream.wait_event(free[slot])
            for dst, src in zip(params, self.host[index]):
                dst.data.copy_(src, non_blocking=True)
            ready[slot].record(copy_stream)

    def layers(self, transformer) -> Iterator[nn.Module]:
        """The resident layers, then every streamed one copied into a slot (the next copy already on its way while
        the caller runs the one yielded)."""
        yield from transformer.model.layers
        count = len(self.host)
        if count == 0:
            return
        device = next(self.slots[0].parameters()).device  # wherever the model's owner put the slots
        sync = self._cuda_sync(device)
        if sync is not None:
            for event in sync[2]:  # nothing uses the slots before the first streamed layer
                event.record(torch.cuda.current_stream(device))
        self._load(0, 0, sync)
        for i in range(count):
            slot = i % len(self.slots)
            if i + 1 < count:
                self._load(i + 1, (i + 1) % len(self.slots), sync)
            if sync is not None:
                torch.cuda.current_stream(device).wait_event(sync[1][slot])
            yield self.slots[slot]
            if sync is not None:  # the caller ran the layer: the slot may be refilled once that work is done
                sync[2][slot].record(torch.cuda.current_stream(device))


def enable_low_vram(transformer: nn.Module, device: str | torch.device, blocks_on_gpu: int = 0) -> LayerStreamer | None:
    """Keep the first `blocks_on_gpu` layers (and everything outside the layers) on `device`; stream the rest from
    host memory. Returns None (nothing streamed) when `blocks_on_gpu` covers every layer."""
    if blocks_on_gpu < 0:
        raise ValueError(f"blocks_on_gpu={blocks_on_gpu} must be >= 0")
    device = torch.device(device)
    layers = list(transformer.model.layers)
    keep = min(blocks_on_gpu, len(layers))
    if keep == len(layers):
        return None
    streamed = layers[keep:]
    slots = nn.ModuleList(copy.deepcopy(streamed[0]) for _ in range(min(SLOTS, len(streamed))))
    streamer = LayerStreamer(streamed, slots)
    transformer.model.layers = nn.ModuleList(layers[:keep])
    transformer.stream_slots = slots
    transformer.to(device)
    transformer.layer_fetch = streamer
    return streamer


class DetachedEmbedding:
    """The token embedding table outside the module tree, on its own device: a model manager moving the transformer
    (ModelPatcher, `.to()`) leaves it there. Lookups run where the table is; the caller moves the result."""

    def __init__(self, embedding: nn.Embedding, device: torch.device):
        self.embedding = embedding.to(device)

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids.to(self.embedding.weight.device))


def place_embeddings(transformer: nn.Module, device: str | torch.device) -> DetachedEmbedding:
    """Keep the token embedding table (text vocabulary + visual codebook rows: 0.9 GB in bf16 for URSA-1.7B) on
    `device`, e.g. the CPU: only the embedded tokens of each forward travel to the layers' device."""
    embedding = transformer.model.embed_tokens
    if isinstance(embedding, DetachedEmbedding):
        embedding = embedding.embedding
    else:
        del transformer.model.embed_tokens  # leaves the module tree (and the state dict the patcher measures)
    detached = DetachedEmbedding(embedding, torch.device(device))
    transformer.model.embed_tokens = detached
    return detached
