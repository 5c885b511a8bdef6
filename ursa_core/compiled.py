"""Optional torch.compile of the decoder layer (one graph serves all layers: modules are graph inputs)."""
from __future__ import annotations

import torch


def _run_layer(layer, x, cos, sin, attention_fn):
    return layer(x, cos, sin, attention_fn)


def compile_layers(transformer, mode: str | None = None) -> None:
    """Route the layer loop through one compiled layer function (static shapes per clip size)."""
    step = torch.compile(_run_layer, dynamic=False, mode=mode)

    def runner(model, x, cos, sin):
        for layer in model.model.layers:
            x = step(layer, x, cos, sin, model.attention_fn)
        return x
    transformer.layer_runner = runner
