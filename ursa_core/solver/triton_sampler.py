"""Fused CUDA (Triton) kernels for the Euler jump step: one program per token, looping over the codebook in
blocks, so no [tokens, K] distance / probability / rate tensor is ever written.

`categorical_from_logits` draws x1 ~ softmax(z) by inverse CDF (z already guided: guidance is applied to
hidden states before the head); `metric_jump` computes
d(x, x1) on the fly from the unit codebook, the rate u(x) = p_t(x|x1) (d(x_t,x1) - d(x,x1))_+, the jump test and
the destination draw. They consume the same uniforms as euler.py's torch path, so results agree token for token
except where float summation order moves a draw across a CDF boundary (measured in tests/test_cuda.py).
"""
from __future__ import annotations

import torch

try:  # triton ships with CUDA builds of torch; CPU-only installs simply use the torch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on CPU machines
    triton = None


def available(device: torch.device) -> bool:
    return triton is not None and torch.device(device).type == "cuda"


if triton is not None:
    @triton.jit
    def _logit_block(row_ptr, offs, K):
        return tl.load(row_ptr + offs, mask=offs < K, other=float("-inf")).to(tl.float32)

    @triton.jit
    def _categorical_kernel(logits_ptr, stride, u_ptr, out_ptr, K, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        row_ptr = logits_ptr + row * stride
        best = float("-inf")
        for start in range(0, K, BLOCK):
            best = tl.maximum(best, tl.max(_logit_block(row_ptr, start + tl.arange(0, BLOCK), K)))
        total = 0.0
        for start in range(0, K, BLOCK):
            total += tl.sum(tl.exp(_logit_block(row_ptr, start + tl.arange(0, BLOCK), K) - best))
        target = tl.load(u_ptr + row) * total
        below = 0.0
        pick = K - 1
        for start in range(0, K, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            e = tl.exp(_logit_block(row_ptr, offs, K) - best)
            cdf = tl.cumsum(e, axis=0) + below
            pick = tl.minimum(pick, tl.min(tl.where((cdf > target) & (offs < K), offs, K - 1)))
            below += tl.sum(e)
        tl.store(out_ptr + row, pick)

    @triton.jit
    def _distances(unit_ptr, sumsq_ptr, offs, mask, e1, s1, D: tl.constexpr, DP: tl.constexpr):
        dims = tl.arange(0, DP)
        codes = tl.load(unit_ptr + offs[:, None] * D + dims[None, :], mask=mask[:, None] & (dims[None, :] < D),
                        other=0.0)
        sq = tl.load(sumsq_ptr + offs, mask=mask, other=0.0)
        return tl.maximum(sq + s1 - 2.0 * tl.sum(codes * e1[None, :], axis=1), 0.0)

    @triton.jit
    def _block_distances(src_ptr, sumsq_ptr, offs, mask, e1, s1, FROM_ROWS: tl.constexpr, D: tl.constexpr,
                         DP: tl.constexpr):
        """d(x, x1) for a block of codes x: read from a precomputed row, or computed from the unit codebook."""
        if FROM_ROWS:
            return tl.maximum(tl.load(src_ptr + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
        else:
            return _distances(src_ptr, sumsq_ptr, offs, mask, e1, s1, D, DP)

    @triton.jit
    def _jump_kernel(src_ptr, stride, sumsq_ptr, x1_ptr, xt_ptr, beta_ptr, bdot_ptr, h_ptr, u_ptr, out_ptr, n, K,
                     FROM_ROWS: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr):
        """One token per program. src is the unit codebook [K, D] (narrow codes) or, with FROM_ROWS, the
        distance rows [n, K] (wide codes: one tensor-core matmul per chunk computed them)."""
        row = tl.program_id(0)
        x1, xt = tl.load(x1_ptr + row).to(tl.int32), tl.load(xt_ptr + row).to(tl.int32)
        beta, bdot, h = tl.load(beta_ptr + row), tl.load(bdot_ptr + row), tl.load(h_ptr + row)
        dims = tl.arange(0, DP)
        if FROM_ROWS:
            base = src_ptr + row.to(tl.int64) * stride
            e1 = tl.zeros([DP], dtype=tl.float32)
            s1 = 0.0
            d_cur = tl.maximum(tl.load(base + xt).to(tl.float32), 0.0)
        else:
            base = src_ptr
            e1 = tl.load(src_ptr + x1 * D + dims, mask=dims < D, other=0.0)
            et = tl.load(src_ptr + xt * D + dims, mask=dims < D, other=0.0)
            s1 = tl.load(sumsq_ptr + x1)
            d_cur = tl.maximum(tl.load(sumsq_ptr + xt) + s1 - 2.0 * tl.sum(et * e1, axis=0), 0.0)
        norm, rate = 0.0, 0.0
        for start in range(0, K, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < K
            d = _block_distances(base, sumsq_ptr, offs, mask, e1, s1, FROM_ROWS, D, DP)
            w = tl.where(mask, tl.exp(-beta * d), 0.0)  # min d is 0 (at x1), so this is softmax's numerator
            norm += tl.sum(w)
            rate += tl.sum(tl.where(mask & (offs != xt), w * tl.maximum(d_cur - d, 0.0), 0.0))
        jump_prob = 1.0 - tl.exp(-h * bdot * rate / norm)
        pick = xt  # int32, like every value assigned to it below
        if tl.load(u_ptr + row) < jump_prob:
            target = tl.load(u_ptr + n + row) * rate
            below = 0.0
            pick = K - 1
            for start in range(0, K, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                mask = offs < K
                d = _block_distances(base, sumsq_ptr, offs, mask, e1, s1, FROM_ROWS, D, DP)
                r = tl.where(mask & (offs != xt), tl.exp(-beta * d) * tl.maximum(d_cur - d, 0.0), 0.0)
                cdf = tl.cumsum(r, axis=0) + below
                pick = tl.minimum(pick, tl.min(tl.where((cdf > target) & mask, offs, K - 1)))
                below += tl.sum(r)
        tl.store(out_ptr + row, pick)


def jump_from_distances(dist: torch.Tensor, x1: torch.Tensor, x_t: torch.Tensor, beta: torch.Tensor,
                        beta_dot: torch.Tensor, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """New tokens given d(x, x1) rows [n, K] (any float dtype); uniforms [2, n]."""
    dist = dist.contiguous()
    return _launch_jump(dist, dist.stride(0), dist, x1, x_t, beta, beta_dot, h, uniforms, from_rows=True,
                        dim=1, block=2048, warps=8)


def _launch_jump(src, stride, sumsq, x1, x_t, beta, beta_dot, h, uniforms, from_rows, dim, block, warps):
    n, k = x1.numel(), (src.shape[1] if from_rows else src.shape[0])
    out = torch.empty_like(x_t)
    f32 = (lambda t: t.float().contiguous())  # noqa: E731
    _jump_kernel[(n,)](src, stride, sumsq, x1.contiguous(), x_t.contiguous(), f32(beta), f32(beta_dot), f32(h),
                       f32(uniforms), out, n, k, FROM_ROWS=from_rows, D=dim,
                       DP=max(2, triton.next_power_of_2(dim)), BLOCK=block, num_warps=warps)
    return out


def categorical_from_logits(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """x1 per row of the (already guided) logits [n, K], any float dtype."""
    n, k = logits.shape
    out = torch.empty(n, dtype=torch.long, device=logits.device)
    logits = logits.contiguous()
    _categorical_kernel[(n,)](logits, logits.stride(0), uniforms.float().contiguous(), out, k, BLOCK=2048,
                              num_warps=8)
    return out


def metric_jump(unit: torch.Tensor, sumsq: torch.Tensor, x1: torch.Tensor, x_t: torch.Tensor, beta: torch.Tensor,
                beta_dot: torch.Tensor, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """New tokens for one jump step; uniforms [2, n] = (jump test, destination draw)."""
    unit, sumsq = unit.float().contiguous(), sumsq.float().contiguous()
    return _launch_jump(unit, 0, sumsq, x1, x_t, beta, beta_dot, h, uniforms, from_rows=False,
                        dim=unit.shape[1], block=1024, warps=4)
