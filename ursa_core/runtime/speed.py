"""How a loaded model runs, in one home for both front ends: `SpeedOptions` (the CLI's flags, the loader node's
widgets: attention kernel, compiled layers, fp8 weight storage, block swap, where the tokenizer and the text side
live) applied by `with_speed` to a handle of the loaded model, never to the loaded model itself."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .. import rules
from ..attention.backends import resolve as resolve_attention
from ..checkpoint.loader import URSAModel
from .loader_options import blocks_to_keep, placement_device
from .lowvram import enable_low_vram, place_embeddings
from .weight_dtype import store_weights, weight_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedOptions:
    attention: str = "auto"          # a name of the attention registry (attention/backends.py)
    compile: bool = False            # torch.compile of the layer halves around attention (runtime/compiled.py)
    weight_dtype: str = "default"    # fp8 storage of the layers' projections (runtime/weight_dtype.py)
    low_vram: str = "off"            # block swap: auto (from free memory), off, stream (runtime/lowvram.py)
    blocks_on_gpu: int = 0           # with stream: decoder layers that stay on the GPU
    vq_device: str = "default"       # where the visual tokenizer runs; default: the front end's choice
    text_device: str = "default"     # where the token embedding table lives; default: the front end's choice

    def __post_init__(self):
        rules.attention(self.attention)
        rules.weight_dtype(self.weight_dtype)
        rules.low_vram_mode(self.low_vram)
        rules.blocks_on_gpu(self.blocks_on_gpu)
        rules.placement("vq_device", self.vq_device)
        rules.placement("text_device", self.text_device)

    @property
    def streams(self) -> bool:
        """Layers always stream (the CLI's --low-vram); auto decides from free memory when the model is placed."""
        return self.low_vram == "stream"


@dataclass(frozen=True)
class Placement:
    """The devices a front end gives the options: where the model computes, where its weights sit until then
    (ComfyUI's offload device; the compute device on the CLI), where a text_device of "default" puts the embedding
    table, and for low_vram="auto" the free memory of the compute device and the manager's VRAM state
    ("normal", "low": always stream as many layers as fit, "none": stream every layer). free_bytes None: the
    device's memory is not a limit (a CPU), so auto never streams."""
    compute: torch.device
    home: torch.device
    text: torch.device
    free_bytes: Optional[int] = None
    vram_state: str = "normal"

    @classmethod
    def single(cls, device: str | torch.device) -> "Placement":
        """Everything on one device (the CLI, a script)."""
        device = torch.device(device)
        return cls(device, device, device)


def with_speed(model: URSAModel, options: SpeedOptions, placement: Placement) -> URSAModel:
    """A handle of `model` that runs with `options`: its transformer is a clone sharing the loaded weights, so
    `model` itself is left as loaded (as ComfyUI's model.clone() before a patch). In one order for every front end:
    the attention kernel (resolved where the model computes), fp8 weight storage, the text side's device, block
    swap, compiled layers. The visual tokenizer is shared; its device is the front end's to manage."""
    transformer = model.transformer.clone()
    transformer.set_attention(resolve_attention(options.attention, placement.compute))
    store_weights(transformer, options.weight_dtype)
    text = placement_device(options.text_device, placement.text)
    if text != placement.compute:
        place_embeddings(transformer, text)
    _block_swap(transformer, options, placement)
    if options.compile:
        from .compiled import compile_layers  # imports torch._dynamo: only when asked for
        compile_layers(transformer)
    return replace(model, transformer=transformer)


def _block_swap(transformer, options: SpeedOptions, placement: Placement) -> None:
    """Stream the layers that do not stay on the compute device (runtime/lowvram.py), as the options and the free
    memory decide (blocks_to_keep)."""
    if options.low_vram == "auto" and placement.free_bytes is None:
        return  # no device memory to save (ComfyUI on the CPU)
    layers = [weight_bytes(layer) for layer in transformer.model.layers]
    keep = blocks_to_keep(options.low_vram, options.blocks_on_gpu, layers, weight_bytes(transformer) - sum(layers),
                          placement.free_bytes or 0, placement.vram_state == "low", placement.vram_state == "none")
    if keep is None:
        return
    if placement.compute.type != "cuda":
        log.warning("low_vram streams layers to a GPU; on %s it saves nothing and costs copies", placement.compute)
    streamer = enable_low_vram(transformer, placement.home, keep)
    if streamer is not None:  # as core logs a partial load: users see why a step is slower
        log.info("URSA: %d decoder layers stay on %s, %d stream from RAM (low_vram=%s)", keep, placement.compute,
                 len(streamer.host), options.low_vram)
