"""How much memory a run needs, estimated from the checkpoint config before any weight loads, and the refusal of
runs that cannot fit (one line: the estimate, what the device has, what to change).

Calibrated against docs/PERFORMANCE.md (H100, bf16, CFG): 13x320x512 measured 4.79 GiB peak, estimated 5.7;
49x320x512 measured 5.59 GiB, estimated 6.6; --low-vram at 49 frames measured 4.28 GiB, estimated 4.2. The estimate
errs on the large side for normal runs, so a refused run would not have fitted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import psutil
import torch

from ..errors import InputError
from ..model.config import TransformerConfig
from .lowvram import SLOTS

GiB = 1 << 30
# Live [chunk, K] sampler tensors stay within this budget (generate.auto_chunk reads it too).
LOGIT_BUDGET = {"cuda": 1 << 30, "cpu": 256 << 20}
ACTIVATION_COPIES = 5      # residual, normed input, q/k/v and attention output of one layer, per token x hidden
MLP_CHUNK_TOKENS = 8192    # modeling_ursa's SwiGLU chunk: its fp32 [tokens, intermediate] product
RUNTIME_OVERHEAD = GiB // 4  # kernels' workspaces, allocator slack
BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    activations: int
    attention: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.attention + self.logits + RUNTIME_OVERHEAD

    def describe(self) -> str:
        parts = (("weights", self.weights), ("activations", self.activations), ("attention", self.attention),
                 ("logits", self.logits))
        return f"{self.total / GiB:.1f} GiB (" + ", ".join(f"{n} {v / GiB:.1f}" for n, v in parts if v) + ")"


def layer_params(config: TransformerConfig) -> int:
    q_out, kv_out = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    attn = config.hidden_size * (2 * q_out + 2 * kv_out)
    return attn + 3 * config.hidden_size * config.intermediate_size + 4 * config.head_dim + 2 * config.hidden_size


def estimate(config: TransformerConfig, latent_tokens: int, *, dtype: torch.dtype, device_type: str,
             branches: int = 2, low_vram: bool = False, math_attention: bool = False,
             include_weights: bool = True, blocks_on_gpu: int = 0, fp8_weights: bool = False,
             embeddings_on_device: bool = True) -> MemoryEstimate:
    """Peak bytes of one sampling step: `latent_tokens` visual tokens, `branches` (2 with guidance > 1).
    The loader's options change the weights on the device: with low_vram only `blocks_on_gpu` layers plus the
    streaming slots stay; fp8 storage halves the layers' bf16 bytes; the embedding table may live elsewhere."""
    size = BYTES[dtype]
    table = config.vocab_size if embeddings_on_device else 0
    outer = (table + config.lm_head_size + 1) * config.hidden_size   # embedding table, lm_head, final norm
    layers = min(config.num_hidden_layers, blocks_on_gpu + SLOTS) if low_vram else config.num_hidden_layers
    layer_size = 1 if fp8_weights else size
    weights = outer * size + layers * layer_params(config) * layer_size if include_weights else 0
    seq = config.max_prompt_length + 1 + latent_tokens
    rows = branches * seq
    activations = rows * config.hidden_size * size * ACTIVATION_COPIES
    activations += branches * min(seq, MLP_CHUNK_TOKENS) * config.intermediate_size * 4
    # Fused SDPA kernels never hold the [S, S] scores; PyTorch's math kernel holds them for every head (fp32).
    attention = branches * config.num_attention_heads * seq * seq * 4 if math_attention else 0
    budget = LOGIT_BUDGET["cuda" if device_type == "cuda" else "cpu"]
    # A chunk's head output in the compute dtype lives beside its fp32 copy: measured on an H200 at 1024² (IBQ head,
    # 262 144 rows), the fp32 budget alone left the estimate 0.3-0.4 GiB under the peak.
    logits = min(budget, latent_tokens * branches * config.lm_head_size * 4 * 6) * (4 + size) // 4
    return MemoryEstimate(weights, activations, attention, logits)


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory of a CUDA device, or the host's available RAM for the CPU (psutil: on every OS, as ComfyUI
    measures it); None where it cannot be known."""
    if device.type == "cuda":
        # Memory this process's caching allocator holds but does not use is free for the run too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    if device.type != "cpu":
        return None
    return psutil.virtual_memory().available


def check_fits(need: MemoryEstimate, device: torch.device, what: str, low_vram: bool = False,
               available: Optional[int] = None) -> None:
    """Refuse a run whose estimate exceeds what the device has, saying what to change."""
    have = available_bytes(device) if available is None else available
    if have is None or need.total <= have:
        return
    where = f"{device} has {have / GiB:.1f} GiB free" if device.type == "cuda" else \
        f"this machine has {have / GiB:.1f} GiB of RAM available"
    hints = ["fewer frames or a smaller size"]
    if device.type == "cuda" and not low_vram:
        hints.append("--low-vram (low_vram=True)")
    hints.append("another device" if device.type == "cuda" else "a GPU (--device cuda)")
    raise InputError(f"{what} needs about {need.describe()} but {where}: use "
                     f"{', or '.join(hints)}")
