"""Speed and memory options for a loaded model, in one place (CLI, benchmark and callers use the same order)."""
from __future__ import annotations

import logging

import torch

from ..checkpoint.loader import URSAModel
from ..errors import InputError
from ..model.attention import resolve as resolve_attention

log = logging.getLogger(__name__)


def accelerate(model: URSAModel, *, attention: str = "auto", compile: bool = False, low_vram: bool = False,
               compile_mode: str | None = None, weight_dtype: str = "default", blocks_on_gpu: int = 0,
               compute_device: torch.device | str | None = None) -> URSAModel:
    """Apply the options in place. attention: a name of the attention registry (attention.py). compile:
    torch.compile around attention (measured: 1.29 vs 1.66 s/step at 49 frames). low_vram: stream layers from
    pinned host memory; blocks_on_gpu of them stay resident. weight_dtype: fp8 storage of the layer projections,
    upcast per call (weight_dtype.py). Numbers: docs/PERFORMANCE.md. Fused projections are a load option
    (checkpoint.load_model(fuse_projections=True)). fp8 *matmuls* were removed: measured slower than bf16."""
    if compile and low_vram:
        raise InputError("compile and low_vram cannot be combined: both replace the layer loop")
    transformer = model.transformer
    # A model manager (ComfyUI) may load on the CPU and compute on a GPU: backends must exist where it computes.
    transformer.set_attention(resolve_attention(attention, compute_device or model.device))
    if weight_dtype != "default":
        from .weight_dtype import store_weights
        store_weights(transformer, weight_dtype)
    if low_vram:
        from .lowvram import enable_low_vram
        if model.device.type != "cuda":
            log.warning("low_vram streams layers to a GPU; on %s it saves nothing and costs copies", model.device)
        enable_low_vram(transformer, model.device, blocks_on_gpu)
    if compile:
        from .compiled import compile_layers
        compile_layers(transformer, mode=compile_mode)
    return model
