"""The URSA transformer: a Qwen3 decoder stack run with full bidirectional attention (ursa.md §2).

One module reads `[prompt tokens, BOV, visual tokens + lm_vocab_size]` and predicts, at position p, the visual
token at p + 1. `lm_head` covers only the K visual codes. Parameter names match the official state dict.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import TransformerConfig
from .rope import apply_rotary


class RMSNorm(nn.Module):
    """Mean of squares in fp32, scaled in the input dtype (as the reference's fallback)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q, k, v as [B, S, heads, D] tensors; QK-norm is applied per head before the rotary embedding.

        They are handed to attention as [B, heads, S, D] *views* (see `attend_heads`): the strided layout cuDNN's
        attention kernel runs fastest on. Returning them untransposed also keeps torch.compile from changing it.
        """
        q, k, v = self._qkv(x)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return apply_rotary(self.q_norm(q), cos, sin), apply_rotary(self.k_norm(k), cos, sin), v

    def _qkv(self, x: torch.Tensor):
        if hasattr(self, "qkv_proj"):
            return self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def fuse_projections(self) -> None:
        """One [q; k; v] matmul instead of three: larger GEMMs run closer to peak. Inference only (the state dict
        then has `qkv_proj` instead of the official names)."""
        self.qkv_sizes = [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features]
        self.qkv_proj = _concat_linear(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        batch, _, seq, _ = attended.shape
        return self.o_proj(attended.transpose(1, 2).reshape(batch, seq, -1))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_fn: Optional[Callable] = None) -> torch.Tensor:
        return self.output(attend_heads(attention_fn, *self.project(x, cos, sin)))


def _concat_linear(*linears: nn.Linear) -> nn.Linear:
    weight = torch.cat([lin.weight.detach() for lin in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


def attend_heads(attention_fn: Optional[Callable], q, k, v) -> torch.Tensor:
    """[B, S, heads, D] q/k/v -> attention output [B, heads, S, D]; bidirectional: no mask, no causal flag."""
    attend = attention_fn or sdpa_attention
    return attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full bidirectional attention with grouped KV heads through PyTorch SDPA."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=q.shape[1] != k.shape[1])


class MLP(nn.Module):
    # Tokens per MLP chunk: the [tokens, intermediate] fp32 SwiGLU product is the largest activation of a step
    # (1.6 GiB per CFG branch for a 49-frame video); chunking over tokens is exact and caps it.
    chunk_tokens = 8192

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= self.chunk_tokens:
            return self._swiglu(x)
        return torch.cat([self._swiglu(part) for part in x.split(self.chunk_tokens, dim=1)], dim=1)

    def fuse_projections(self) -> None:
        """gate and up in one matmul (see Attention.fuse_projections)."""
        self.gate_up_proj = _concat_linear(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def _swiglu(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        # SwiGLU product in fp32, as the reference's jiterator kernel does.
        return self.down_proj((F.silu(gate.float()) * up.float()).to(x.dtype))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def attention_inputs(self, x, cos, sin):
        return self.self_attn.project(self.input_layernorm(x), cos, sin)

    def after_attention(self, x, attended):
        x = x + self.self_attn.output(attended)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward(self, x, cos, sin, attention_fn=None):
        return self.after_attention(x, attend_heads(attention_fn, *self.attention_inputs(x, cos, sin)))


class Qwen3Stack(nn.Module):
    """`model.*` in the state dict: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class URSATransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.model = Qwen3Stack(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.lm_head_size, bias=False)
        # Hook for low-VRAM streaming / alternative attention kernels; None = plain SDPA, resident weights.
        self.layer_runner: Optional[Callable] = None
        self.attention_fn: Optional[Callable] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def hidden_states(self, input_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final-normed hidden states [B, len(keep) or S, hidden] at the positions `keep` (all when None).

        Selecting rows before the final norm is exact (the norm is per token) and keeps the head's work to the
        positions the sampler reads.
        """
        # The embedding table may live on another device (lowvram.place_embeddings); the layers' device is lm_head's.
        x = self.model.embed_tokens(input_ids).to(self.lm_head.weight.device)
        if self.layer_runner is not None:
            x = self.layer_runner(self, x, cos, sin)
        else:
            for layer in self.model.layers:
                x = layer(x, cos, sin, self.attention_fn)
        if keep is not None:
            x = x[:, keep]
        return self.model.norm(x)

    def fuse_projections(self) -> None:
        """Fuse every layer's projections (idempotent)."""
        for layer in self.model.layers:
            if hasattr(layer.self_attn, "qkv_proj"):
                continue
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()

    def visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the K visual codes for already-selected hidden states."""
        return self.lm_head(hidden)

    def forward(self, input_ids, cos, sin, keep=None):
        return self.visual_logits(self.hidden_states(input_ids, cos, sin, keep))


def expected_state_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official transformer state dict with its shape (ursa.md §1.3)."""
    hd = cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size),
              "model.norm.weight": (cfg.hidden_size,),
              "lm_head.weight": (cfg.lm_head_size, cfg.hidden_size)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (cfg.hidden_size,),
            p + "post_attention_layernorm.weight": (cfg.hidden_size,),
            p + "self_attn.q_proj.weight": (cfg.num_attention_heads * hd, cfg.hidden_size),
            p + "self_attn.k_proj.weight": (cfg.num_key_value_heads * hd, cfg.hidden_size),
            p + "self_attn.v_proj.weight": (cfg.num_key_value_heads * hd, cfg.hidden_size),
            p + "self_attn.o_proj.weight": (cfg.hidden_size, cfg.num_attention_heads * hd),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, cfg.hidden_size),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, cfg.hidden_size),
            p + "mlp.down_proj.weight": (cfg.hidden_size, cfg.intermediate_size),
        })
    return shapes
