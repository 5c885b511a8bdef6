"""The URSA transformer: a Qwen3 decoder stack run with full bidirectional attention (docs/ARCHITECTURE.md,
"The transformer").

One module reads `[prompt tokens, BOV, visual tokens + lm_vocab_size]` and predicts, at position p, the visual
token at p + 1. `lm_head` covers only the K visual codes. Parameter names match the official state dict.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.backends import attention_function
from .config import TransformerConfig
from .rope import RotaryEmbedding, apply_rotary


class RMSNorm(nn.Module):
    """Mean of squares in fp32, scaled in the input dtype (as the reference's fallback)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.fused_kernel = False  # one Triton kernel instead (URSATransformer.set_fused_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_kernel:
            return torch.ops.ursa.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    """Grouped-query attention with QK-norm and 3-axis RoPE. With `fused`, q/k/v come from one [q; k; v] matmul
    (larger GEMMs run closer to peak; the loader concatenates the official weights, see `fuse_state_dict`)."""

    def __init__(self, config: TransformerConfig, fused: bool = False):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attn_implementation = "sdpa"  # a name of the attention registry (URSATransformer.set_attention)
        self.qkv_sizes = [self.num_heads * self.head_dim] + 2 * [self.num_kv_heads * self.head_dim]
        if fused:
            self.qkv_proj = nn.Linear(config.hidden_size, sum(self.qkv_sizes), bias=False)
        else:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(config.hidden_size, n, bias=False)
                                                     for n in self.qkv_sizes)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.fused_qk_rope = False  # QK-norm and RoPE in one Triton kernel (URSATransformer.set_fused_kernels)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q, k, v as [B, S, heads, D] tensors; QK-norm is applied per head before the rotary embedding.

        They are handed to attention as [B, heads, S, D] *views* (see `attend`): the strided layout cuDNN's
        attention kernel runs fastest on. Returning them untransposed also keeps torch.compile from changing it.
        """
        q, k, v = self._qkv(x)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        if self.fused_qk_rope:
            return (torch.ops.ursa.qk_norm_rope(q, self.q_norm.weight, cos, sin, self.q_norm.eps),
                    torch.ops.ursa.qk_norm_rope(k, self.k_norm.weight, cos, sin, self.k_norm.eps), v)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return apply_rotary(self.q_norm(q), cos, sin), apply_rotary(self.k_norm(k), cos, sin), v

    def _qkv(self, x: torch.Tensor):
        if hasattr(self, "qkv_proj"):
            return self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[B, S, heads, D] q/k/v -> [B, heads, S, D] through the registered backend `attn_implementation`;
        bidirectional: no mask, no causal flag."""
        attend = attention_function(self.attn_implementation)
        return attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        batch, _, seq, _ = attended.shape
        return self.o_proj(attended.transpose(1, 2).reshape(batch, seq, -1))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self.output(self.attend(*self.project(x, cos, sin)))


class MLP(nn.Module):
    # Tokens per MLP chunk: the [tokens, intermediate] fp32 SwiGLU product is the largest activation of a step
    # (1.6 GiB per CFG branch for a 49-frame video); chunking over tokens is exact and caps it.
    chunk_tokens = 8192

    def __init__(self, config: TransformerConfig, fused: bool = False):
        super().__init__()
        if fused:  # gate and up in one matmul (see Attention)
            self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        else:
            self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.fused_swiglu = False  # the SwiGLU product in one Triton kernel (URSATransformer.set_fused_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= self.chunk_tokens:
            return self._swiglu(x)
        return torch.cat([self._swiglu(part) for part in x.split(self.chunk_tokens, dim=1)], dim=1)

    def _swiglu(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        if self.fused_swiglu:
            return self.down_proj(torch.ops.ursa.swiglu(gate, up))
        # SwiGLU product in fp32, as the reference's jiterator kernel does.
        return self.down_proj((F.silu(gate.float()) * up.float()).to(x.dtype))


class DecoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig, fused: bool = False):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, fused)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, fused)

    def attention_inputs(self, x, cos, sin):
        return self.self_attn.project(self.input_layernorm(x), cos, sin)

    def after_attention(self, x, attended):
        norm = self.post_attention_layernorm
        if norm.fused_kernel:  # the residual add and the norm in one pass
            x, normed = torch.ops.ursa.add_rms_norm(x, self.self_attn.output(attended), norm.weight, norm.eps)
            return x + self.mlp(normed)
        x = x + self.self_attn.output(attended)
        return x + self.mlp(norm(x))

    def forward(self, x, cos, sin):
        return self.after_attention(x, self.self_attn.attend(*self.attention_inputs(x, cos, sin)))


class Qwen3Stack(nn.Module):
    """`model.*` in the state dict: embeddings, decoder layers, final norm."""

    def __init__(self, config: TransformerConfig, fused: bool = False):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, fused) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class TransformerOutput(NamedTuple):
    logits: torch.Tensor
    # (embeddings, output of layer 1, ..., output of layer N after the final norm), each [B, S, hidden]: the
    # convention of transformers' output_hidden_states, so states compare one to one with the reference.
    hidden_states: tuple[torch.Tensor, ...]


class URSATransformer(nn.Module):
    def __init__(self, config: TransformerConfig, fuse_projections: bool = False):
        super().__init__()
        self.config = config
        self.model = Qwen3Stack(config, fuse_projections)
        self.lm_head = nn.Linear(config.hidden_size, config.lm_head_size, bias=False)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.max_prompt_length)
        # Where each layer's weights come from (`layers(transformer)` -> the layers in order, ready to run; None: the
        # resident layers as they are) and how a layer runs (`call(layer, x, cos, sin)`; None: eagerly). Block swap
        # sets the first (runtime/lowvram.py), compile the second (runtime/compiled.py): they combine.
        self.layer_fetch = None
        self.layer_call: Optional[Callable] = None
        # Whether sampling steps may replay as CUDA graphs (runtime/graphs.py decides where they can).
        self.graph_steps = False
        self._attention = "sdpa"
        self._fused_kernels: frozenset = frozenset()

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def clone(self) -> "URSATransformer":
        """A transformer with modules of its own that shares every weight tensor with this one (as ComfyUI's
        model.clone()): options applied to the clone (attention, fp8 storage, block swap, compile) leave this one as
        it was. Only a transformer as loaded can be cloned (no layer fetch or compiled call attached)."""
        if self.layer_fetch is not None or self.layer_call is not None:
            raise ValueError("clone the transformer as loaded, before block swap or compile are attached")
        shared = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in self.parameters()}
        shared.update({id(b): b for b in self.buffers()})
        return copy.deepcopy(self, memo=shared)

    def decoder_layers(self) -> Iterator[nn.Module]:
        """Every decoder layer in order, its weights ready on the layers' device: the one place a layer's weights are
        fetched. Block swap copies a streamed layer into a device slot here (runtime/lowvram.py); per-layer weight
        patches (LoRA deltas, an upcast of stored weights) join here too, as a `layer_fetch` wrapping another."""
        return iter(self.model.layers) if self.layer_fetch is None else self.layer_fetch.layers(self)

    def rotary_tables(self, latent_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [S, head_dim] of the prompt + BOV + a [T, h, w] clip, in the layers' dtype and on their device."""
        return self.rotary(latent_shape, self.dtype, self.lm_head.weight.device)

    @property
    def attn_implementation(self) -> str:
        """The attention backend every layer runs (kept here: with block swap no layer may be resident)."""
        return self._attention

    def set_attention(self, name: str) -> None:
        """Run every layer's attention through the registered backend `name` (see attention/backends.py)."""
        attention_function(name)  # an unknown name fails here, not in the middle of a step
        self._attention = name
        self.apply_switches(self)

    @property
    def fused_kernels(self) -> frozenset:
        """The kinds of fused Triton kernels the layers run (model/fused_ops.KINDS); empty: the eager modules."""
        return self._fused_kernels

    def set_fused_kernels(self, kinds: Iterable[str]) -> None:
        """Run the layers' norms ("norm": input, post-attention with its residual add, final), QK-norm + RoPE
        ("qk_rope") and SwiGLU ("swiglu") through the fused Triton kernels of model/fused_ops.py; an empty `kinds`
        restores the eager modules. The kernels run on CUDA tensors (CPU ones only under Triton's interpreter)."""
        from . import fused_ops

        kinds = frozenset(kinds)
        if kinds - set(fused_ops.KINDS):
            raise ValueError(f"unknown fused kernels {sorted(kinds - set(fused_ops.KINDS))}; "
                             f"kinds: {fused_ops.KINDS}")
        if kinds:
            fused_ops.register()
        self._fused_kernels = kinds
        self.apply_switches(self)

    def apply_switches(self, root: nn.Module) -> None:
        """Give every module of `root` this transformer's runtime switches (attention backend, fused kernels): its
        own modules (the low-VRAM slots are submodules too) and layers built to run in its place (a LoRA's scratch
        layer), which would otherwise run the defaults."""
        for module in root.modules():
            if isinstance(module, RMSNorm):
                module.fused_kernel = "norm" in self._fused_kernels
            elif isinstance(module, Attention):
                module.attn_implementation = self._attention
                module.fused_qk_rope = "qk_rope" in self._fused_kernels
            elif isinstance(module, MLP):
                module.fused_swiglu = "swiglu" in self._fused_kernels

    def hidden_states(self, input_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      keep: Optional[torch.Tensor] = None, collect: Optional[list] = None) -> torch.Tensor:
        """Final-normed hidden states [B, len(keep) or S, hidden] at the positions `keep` (all when None).

        Selecting rows before the final norm is exact (the norm is per token) and keeps the head's work to the
        positions the sampler reads. `collect` (a list) receives the embeddings and every layer's output.
        """
        # The embedding table may live on another device (lowvram.place_embeddings); the layers' device is lm_head's.
        x = self.model.embed_tokens(input_ids).to(self.lm_head.weight.device)
        if collect is not None:
            collect.append(x)
        for layer in self.decoder_layers():
            x = layer(x, cos, sin) if self.layer_call is None else self.layer_call(layer, x, cos, sin)
            if collect is not None:
                collect.append(x)
        if keep is not None:
            x = x[:, keep]
        return self.model.norm(x)

    def visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the K visual codes for already-selected hidden states."""
        return self.lm_head(hidden)

    def forward(self, input_ids, cos, sin, keep=None, output_hidden_states: bool = False):
        """Visual logits [B, len(keep) or S, K]; with output_hidden_states a TransformerOutput that also holds
        every layer's hidden states (the whole sequence, whatever `keep` selects for the logits)."""
        if not output_hidden_states:
            return self.visual_logits(self.hidden_states(input_ids, cos, sin, keep))
        states: list[torch.Tensor] = []
        hidden = self.hidden_states(input_ids, cos, sin, keep, collect=states)
        states[-1] = self.model.norm(states[-1])
        return TransformerOutput(self.visual_logits(hidden), tuple(states))


# Fused module <- the official projections it concatenates (output rows in this order).
FUSED_PROJECTIONS = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                     "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def fuse_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official state dict with each layer's q/k/v and gate/up weights concatenated for a fused model."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".self_attn.q_proj.weight")]:
        prefix = key[:-len("self_attn.q_proj.weight")]
        for fused, parts in FUSED_PROJECTIONS.items():
            out[f"{prefix}{fused}.weight"] = torch.cat([out.pop(f"{prefix}{p}.weight") for p in parts])
    return out


def build_transformer(config: TransformerConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
                      fuse_projections: bool = False) -> URSATransformer:
    """A transformer holding `state` (official names) in `dtype`, without ever allocating random weights."""
    with torch.device("meta"):
        model = URSATransformer(config, fuse_projections)
    if fuse_projections:
        state = fuse_state_dict(state)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True, strict=True)
    return model.eval().requires_grad_(False)


def expected_state_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official transformer state dict with its shape (docs/ARCHITECTURE.md, "Checkpoint layout")."""
    hd = config.head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.hidden_size),
              "model.norm.weight": (config.hidden_size,),
              "lm_head.weight": (config.lm_head_size, config.hidden_size)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (config.hidden_size,),
            p + "post_attention_layernorm.weight": (config.hidden_size,),
            p + "self_attn.q_proj.weight": (config.num_attention_heads * hd, config.hidden_size),
            p + "self_attn.k_proj.weight": (config.num_key_value_heads * hd, config.hidden_size),
            p + "self_attn.v_proj.weight": (config.num_key_value_heads * hd, config.hidden_size),
            p + "self_attn.o_proj.weight": (config.hidden_size, config.num_attention_heads * hd),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (config.intermediate_size, config.hidden_size),
            p + "mlp.up_proj.weight": (config.intermediate_size, config.hidden_size),
            p + "mlp.down_proj.weight": (config.hidden_size, config.intermediate_size),
        })
    return shapes
