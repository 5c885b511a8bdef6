"""Weight storage dtype, named as core ComfyUI's UNETLoader names it: `default`, `fp8_e4m3fn`, `fp8_e5m2`.

With an fp8 storage dtype every projection of the decoder layers keeps its weight in fp8 (half the bytes of bf16)
with one fp32 scale per output row, and is upcast to the compute dtype (the input's dtype) for each call. Nothing
else changes: embeddings, norms and lm_head stay in the compute dtype. This runs on any device (the fp8 *matmul*
path was removed: measured slower than bf16); the only difference from the compute-dtype model is the fp8 rounding
of weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import rules
from ..errors import InputError

STORAGE_DTYPES = dict(zip(rules.WEIGHT_DTYPES, (None, torch.float8_e4m3fn, torch.float8_e5m2)))
# Fused loads (checkpoint.load_model(fuse_projections=True)) name them qkv_proj and gate_up_proj.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
               "down_proj")


def check_weight_dtype(name: str) -> str | None:
    """None when `name` is a storage dtype, else the one-line rule."""
    checked = rules.first_problem(lambda: rules.weight_dtype(name))
    return None if checked is True else checked


class UpcastLinear(nn.Module):
    """A bias-free Linear whose weight is stored in `storage` dtype with a per-row scale, upcast at every call."""

    def __init__(self, linear: nn.Linear, storage: torch.dtype):
        super().__init__()
        weight = linear.weight.detach().float()
        limit = torch.finfo(storage).max
        scale = (weight.abs().amax(dim=1, keepdim=True) / limit).clamp_min(torch.finfo(torch.float32).tiny)
        self.weight = nn.Parameter((weight / scale).clamp(-limit, limit).to(storage), requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight upcast to `dtype` (what every call computes with; LoRA merges add to this)."""
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(x.dtype))


def store_weights(transformer: nn.Module, weight_dtype: str) -> int:
    """Store every decoder-layer projection in `weight_dtype` (see module doc); returns how many were converted."""
    error = check_weight_dtype(weight_dtype)
    if error:
        raise InputError(error)
    storage = STORAGE_DTYPES[weight_dtype]
    if storage is None:
        return 0
    count = 0
    for layer in transformer.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in PROJECTIONS:
                linear = getattr(parent, name, None)
                if isinstance(linear, nn.Linear) and linear.bias is None:
                    setattr(parent, name, UpcastLinear(linear, storage))
                    count += 1
    return count


def weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
