"""The discrete Euler (CTMC jump) step of the metric path, chunked over tokens (docs/ARCHITECTURE.md, "The jump step").

For each token: draw x1 ~ softmax(z); unless this is the last step, build the kinetic-optimal velocity
u(x) = p_t(x | x1) * beta_dot_t * max(0, d(x_t, x1) - d(x, x1)), u(x_t) = 0, jump with probability
1 - exp(-h * sum u) to x ~ u / sum u. Every random draw comes from per-token uniforms supplied by the caller, so the
result does not depend on how tokens are split into chunks.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..path.metric_path import MetricPath, sample_from_cdf, sample_from_weights
from ..path.schedule import FrameClocks


def euler_step(path: MetricPath, logits_fn: Callable[[slice], torch.Tensor], x_t: torch.Tensor,
               clocks: FrameClocks, uniforms: torch.Tensor, final: bool, chunk: int, fused: bool = False):
    """One jump step for the flat token vector x_t [n]; returns (new tokens, sampled x1).

    logits_fn(slice) gives the logits [len, K] of those tokens, already guided (guidance happens in hidden-state
    space before the head, see generate.guided_logits); uniforms is [3, n] (x1 draw, jump test, destination draw).
    At most `chunk` rows of any [n, K] tensor exist at a time; with `fused` (CUDA + Triton) only the logits chunk
    itself does.
    """
    x_new = torch.empty_like(x_t)
    x1_all = torch.empty_like(x_t)
    for start in range(0, x_t.numel(), chunk):
        sl = slice(start, start + chunk)
        logits = logits_fn(sl)
        if fused:
            from .triton_sampler import categorical_from_logits
            x1 = categorical_from_logits(logits, uniforms[0, sl])
        else:
            probs = torch.softmax(logits.float(), dim=-1)
            x1 = sample_from_weights(probs, uniforms[0, sl])
            del probs
        del logits
        x1_all[sl] = x1
        if final:
            x_new[sl] = x1
        elif fused:
            x_new[sl] = _fused_jump(path, x1, x_t[sl], clocks, sl, uniforms[1:, sl])
        else:
            x_new[sl] = _jump(path, x_t[sl], x1, clocks, sl, uniforms[1:, sl])
    return x_new, x1_all


# The fused jump recomputes d(x, x1) from the codebook inside the kernel for narrow codes (FSQ's 6-D); wider
# embeddings (IBQ) get their distances from a matmul first.
FUSED_MAX_DIM = 32


def _fused_jump(path: MetricPath, x1, x_t, clocks: FrameClocks, sl: slice, uniforms) -> torch.Tensor:
    from . import triton_sampler

    if path.unit.shape[1] <= FUSED_MAX_DIM:  # narrow codes (FSQ): distances recomputed inside the kernel
        return triton_sampler.metric_jump(path.unit, path.sumsq, x1, x_t, clocks.beta[sl], clocks.beta_dot[sl],
                                          clocks.h[sl], uniforms)
    # Wide codes (IBQ): one half-precision tensor-core matmul for d(x, x1) (the reference works in fp16 too),
    # then a kernel that never writes probabilities or rates.
    unit = path.half_unit()
    dist = path.sumsq[x1].unsqueeze(-1).half() + path.sumsq.half() - 2 * (unit[x1] @ unit.T)
    return triton_sampler.jump_from_distances(dist, x1, x_t, clocks.beta[sl], clocks.beta_dot[sl], clocks.h[sl],
                                              uniforms)


def _jump(path: MetricPath, x_t: torch.Tensor, x1: torch.Tensor, clocks: FrameClocks, sl: slice,
          uniforms: torch.Tensor) -> torch.Tensor:
    rate = path.jump_rates(x_t, x1, clocks.beta[sl])
    # The scan's last entry is the row total: a plain .sum() may split rows differently for different chunk
    # sizes on GPUs, and the jump test must not depend on the chunking.
    cdf = torch.cumsum(rate, dim=-1)
    del rate
    total = cdf[:, -1] * clocks.beta_dot[sl].to(cdf.dtype)
    jump_prob = 1 - torch.exp(-clocks.h[sl].to(cdf.dtype) * total)
    jumps = uniforms[0].to(cdf.dtype) < jump_prob
    return torch.where(jumps, sample_from_cdf(cdf, uniforms[1]), x_t)
