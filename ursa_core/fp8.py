"""Opt-in FP8 (e4m3) linear layers for Hopper-class GPUs: weights stored in fp8 with one scale per output row,
activations quantised per token on the fly, products through torch._scaled_mm with bf16 output.

Never on by default: it changes the logits (measured deviation in docs/PERFORMANCE.md).
"""
from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
               "down_proj")


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax scaling into e4m3: returns (fp8 values, fp32 scales [rows, 1])."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class FP8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # one per output feature
        self.out_features, self.in_features = linear.out_features, linear.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows, row_scale = quantize_rows(x.reshape(-1, shape[-1]))
        out = torch._scaled_mm(rows, self.weight_fp8.t(), scale_a=row_scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)


def enable_fp8(transformer: nn.Module) -> int:
    """Swap every attention/MLP projection for an FP8Linear; returns how many were swapped."""
    count = 0
    for layer in transformer.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in PROJECTIONS:
                linear = getattr(parent, name, None)
                if isinstance(linear, nn.Linear):
                    setattr(parent, name, FP8Linear(linear))
                    count += 1
    return count
