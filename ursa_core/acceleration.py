"""Speed and memory options for a loaded model, in one place (CLI, benchmark and callers use the same order)."""
from __future__ import annotations

import logging

from .attention import make_attention
from .errors import InputError
from .model import URSAModel

log = logging.getLogger(__name__)


def accelerate(model: URSAModel, *, attention: str = "auto", fuse: bool = False, compile: bool = False,
               low_vram: bool = False, fp8: bool = False, compile_mode: str | None = None,
               weight_dtype: str = "default", blocks_on_gpu: int = 0) -> URSAModel:
    """Apply the options in place. compile: torch.compile around attention (measured: 1.29 vs 1.66 s/step at
    49 frames). low_vram: stream layers from pinned host memory. fuse: one QKV and one gate/up GEMM per layer
    (exact, but measured no gain at 49 frames and slower at 1024px, so off). fp8: e4m3 projections (changes
    logits; opt-in only). weight_dtype: fp8 storage of the layer projections, upcast per call (weight_dtype.py).
    blocks_on_gpu: with low_vram, how many layers stay resident (the rest stream). Numbers: docs/PERFORMANCE.md."""
    if compile and low_vram:
        raise InputError("compile and low_vram cannot be combined: both replace the layer loop")
    transformer = model.transformer
    transformer.attention_fn = make_attention(attention)
    if fuse:
        transformer.fuse_projections()
    if weight_dtype != "default":
        from .weight_dtype import store_weights
        store_weights(transformer, weight_dtype)
    if fp8:
        from .fp8 import enable_fp8
        enable_fp8(transformer)
    if low_vram:
        from .lowvram import enable_low_vram
        if model.device.type != "cuda":
            log.warning("low_vram streams layers to a GPU; on %s it saves nothing and costs copies", model.device)
        enable_low_vram(transformer, model.device, blocks_on_gpu)
    if compile:
        from .compiled import compile_layers
        compile_layers(transformer, mode=compile_mode)
    return model
