"""Fused Triton kernels for the decoder layer's memory-bound steps: RMSNorm (optionally after the residual add),
QK-norm followed by the 3-axis rotary embedding, and the SwiGLU product.

Eagerly, each of these is a chain of small PyTorch kernels with fp32 intermediates in device memory (a step of the
49-frame clip spends ~0.5 s in them on an H100, docs/PERFORMANCE.md); here each is one pass over its tensors. The
kernels round where the eager modules round (an RMSNorm's normalised value to the activations' dtype before the
weight, each rotary product and their sum), so they follow the eager path to within a unit in the last place.

`register()` makes them torch.library custom ops (`torch.ops.ursa.*`), opaque to torch.compile, so the compiled
layer halves call the same kernels. Production calls them on CUDA tensors only (URSATransformer.set_fused_kernels);
the tests run the same kernel source on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1, which Triton
reads when it is imported: tests/conftest.py sets it on machines without a GPU).
"""
from __future__ import annotations

import torch

try:  # triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

# What set_fused_kernels can switch on: the norms (input, post-attention with its residual add, final), QK-norm +
# rotary, and the SwiGLU product.
KINDS = ("norm", "qk_rope", "swiglu")


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _rms_norm_kernel(x_ptr, delta_ptr, sum_ptr, out_ptr, w_ptr, x_stride, delta_stride, n_cols, eps,
                         HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        """One row: (x + delta, rounded and stored) then weight * round(v * rsqrt(mean(v^2) + eps))."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        dtype = out_ptr.dtype.element_ty
        value = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_DELTA:
            delta = tl.load(delta_ptr + row * delta_stride + cols, mask=mask, other=0.0).to(tl.float32)
            value = (value + delta).to(dtype).to(tl.float32)
            tl.store(sum_ptr + row * n_cols + cols, value.to(dtype), mask=mask)
        rstd = tl.rsqrt(tl.sum(value * value, axis=0) / n_cols + eps)
        weight = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        normed = (value * rstd).to(dtype).to(tl.float32)
        tl.store(out_ptr + row * n_cols + cols, (weight * normed).to(dtype), mask=mask)

    @triton.jit
    def _qk_norm_rope_kernel(src_ptr, out_ptr, w_ptr, cos_ptr, sin_ptr, seq_len, token_stride, head_stride, eps,
                             HEADS: tl.constexpr, HEADS_P: tl.constexpr, HALF: tl.constexpr):
        """Every head of one token: RMSNorm over head_dim, then rotate-half RoPE with that position's cos/sin."""
        token = tl.program_id(0).to(tl.int64)
        position = token % seq_len
        heads = tl.arange(0, HEADS_P)[:, None]
        dims = tl.arange(0, HALF)[None, :]
        mask = heads < HEADS
        dtype = out_ptr.dtype.element_ty
        src = src_ptr + token * token_stride + heads * head_stride + dims
        first = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        second = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        mean_square = (tl.sum(first * first, axis=1) + tl.sum(second * second, axis=1)) / (2 * HALF)
        rstd = tl.rsqrt(mean_square + eps)[:, None]
        # weight * round(x * rstd), rounded: RMSNorm's own roundings (x32.to(dtype), then the weight's product)
        first = (first * rstd).to(dtype).to(tl.float32) * tl.load(w_ptr + dims).to(tl.float32)
        first = first.to(dtype).to(tl.float32)
        second = (second * rstd).to(dtype).to(tl.float32) * tl.load(w_ptr + HALF + dims).to(tl.float32)
        second = second.to(dtype).to(tl.float32)
        table = position * 2 * HALF + dims
        cos1, cos2 = tl.load(cos_ptr + table).to(tl.float32), tl.load(cos_ptr + table + HALF).to(tl.float32)
        sin1, sin2 = tl.load(sin_ptr + table).to(tl.float32), tl.load(sin_ptr + table + HALF).to(tl.float32)
        # x * cos + rotate_half(x) * sin, rotate_half(x) = [-second, first]; each product rounded as eagerly
        out1 = (first * cos1).to(dtype).to(tl.float32) + (-second * sin1).to(dtype).to(tl.float32)
        out2 = (second * cos2).to(dtype).to(tl.float32) + (first * sin2).to(dtype).to(tl.float32)
        dst = out_ptr + token * HEADS * 2 * HALF + heads * 2 * HALF + dims
        tl.store(dst, out1.to(dtype), mask=mask)
        tl.store(dst + HALF, out2.to(dtype), mask=mask)

    @triton.jit
    def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n_cols, gate_stride, up_stride, BLOCK: tl.constexpr):
        """silu(gate) * up in fp32, one rounding to the activations' dtype."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        gate = tl.load(gate_ptr + row * gate_stride + cols, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(up_ptr + row * up_stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n_cols + cols, (gate * tl.sigmoid(gate) * up).to(out_ptr.dtype.element_ty),
                 mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with a unit last stride (a view whenever the leading dims merge)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm_kernel(x: torch.Tensor, weight: torch.Tensor, eps: float, delta: torch.Tensor | None = None):
    """RMSNorm of x (or of x + delta, then also returned): normed, or (x + delta, normed)."""
    n_cols = x.shape[-1]
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(out) if delta is not None else out
    delta_rows = _rows(delta) if delta is not None else rows
    block = triton.next_power_of_2(n_cols)
    _rms_norm_kernel[(rows.shape[0],)](
        rows, delta_rows, summed, out, weight, rows.stride(0), delta_rows.stride(0), n_cols, eps,
        HAS_DELTA=delta is not None, BLOCK=block, num_warps=max(1, min(16, block // 256)))
    if delta is None:
        return out.view(x.shape)
    return summed.view(x.shape), out.view(x.shape)


def qk_norm_rope_kernel(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        eps: float) -> torch.Tensor:
    """x [B, S, heads, D] (any strides with a unit last one), cos/sin [S, D] -> [B, S, heads, D] contiguous."""
    batch, seq, heads, dim = x.shape
    tokens = x.reshape(batch * seq, heads, dim)
    if tokens.stride(-1) != 1:
        tokens = tokens.contiguous()
    out = torch.empty((batch, seq, heads, dim), dtype=x.dtype, device=x.device)
    _qk_norm_rope_kernel[(batch * seq,)](
        tokens, out, weight, cos.contiguous(), sin.contiguous(), seq, tokens.stride(0), tokens.stride(1), eps,
        HEADS=heads, HEADS_P=triton.next_power_of_2(heads), HALF=dim // 2, num_warps=4)
    return out


SWIGLU_BLOCK = 1024


def swiglu_kernel(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up computed in fp32, in gate's dtype; gate/up may be strided views (a fused gate_up's halves)."""
    n_cols = gate.shape[-1]
    gate_rows, up_rows = _rows(gate), _rows(up)
    out = torch.empty(gate_rows.shape, dtype=gate.dtype, device=gate.device)
    grid = (gate_rows.shape[0], triton.cdiv(n_cols, SWIGLU_BLOCK))
    _swiglu_kernel[grid](gate_rows, up_rows, out, n_cols, gate_rows.stride(0), up_rows.stride(0), BLOCK=SWIGLU_BLOCK,
                         num_warps=4)
    return out.view(gate.shape)


_REGISTERED = False


def register() -> None:
    """Define the kernels as custom ops `torch.ops.ursa.{rms_norm, add_rms_norm, qk_norm_rope, swiglu}` (once per
    process): torch.compile then calls them as they are instead of tracing into Triton launches."""
    global _REGISTERED
    if _REGISTERED:
        return
    if triton is None:
        raise RuntimeError("the fused kernels need Triton (it ships with CUDA builds of PyTorch)")
    lib = "ursa::"

    @torch.library.custom_op(lib + "rms_norm", mutates_args=())
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm_kernel(x, weight, eps)

    @torch.library.custom_op(lib + "add_rms_norm", mutates_args=())
    def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return rms_norm_kernel(x, weight, eps, delta)

    @torch.library.custom_op(lib + "qk_norm_rope", mutates_args=())
    def qk_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     eps: float) -> torch.Tensor:
        return qk_norm_rope_kernel(x, weight, cos, sin, eps)

    @torch.library.custom_op(lib + "swiglu", mutates_args=())
    def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return swiglu_kernel(gate, up)

    rms_norm.register_fake(lambda x, weight, eps: torch.empty_like(x, memory_format=torch.contiguous_format))
    add_rms_norm.register_fake(lambda x, delta, weight, eps: (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(x, memory_format=torch.contiguous_format)))
    qk_norm_rope.register_fake(lambda x, weight, cos, sin, eps: x.new_empty(x.shape))
    swiglu.register_fake(lambda gate, up: gate.new_empty(gate.shape))
    _REGISTERED = True
