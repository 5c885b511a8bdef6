"""The discrete Euler (CTMC jump) step of the metric path, chunked over tokens (ursa.md §4.3).

For each token: draw x1 ~ softmax(z); unless this is the last step, build the kinetic-optimal velocity
u(x) = p_t(x | x1) * beta_dot_t * max(0, d(x_t, x1) - d(x, x1)), u(x_t) = 0, jump with probability
1 - exp(-h * sum u) to x ~ u / sum u. Every random draw comes from per-token uniforms supplied by the caller, so the
result does not depend on how tokens are split into chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .metric_path import MetricPath


def sample_from_weights(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row of non-negative `weights` [n, K] with one uniform in [0, 1) per row."""
    return sample_from_cdf(torch.cumsum(weights, dim=-1), uniforms)


def sample_from_cdf(cdf: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return index.clamp_max_(cdf.shape[-1] - 1)


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Classifier-free guidance in logit space: z_u + g (z_c - z_u); the conditional logits when no uncond."""
    if uncond is None:
        return cond
    return uncond + scale * (cond - uncond)


@dataclass
class TokenClocks:
    """Per-token beta_t, beta_dot_t and step size h (flattened like the tokens)."""
    beta: torch.Tensor
    beta_dot: torch.Tensor
    h: torch.Tensor


def euler_step(path: MetricPath, logits_fn: Callable[[slice], LogitPair], x_t: torch.Tensor,
               clocks: TokenClocks, uniforms: torch.Tensor, final: bool, chunk: int, guidance: float = 1.0,
               fused: bool = False):
    """One jump step for the flat token vector x_t [n]; returns (new tokens, sampled x1).

    logits_fn(slice) gives (cond, uncond or None) logits [len, K] of those tokens, combined here with classifier-
    free guidance; uniforms is [3, n] (x1 draw, jump test, destination draw). At most `chunk` rows of any [n, K]
    tensor exist at a time; with `fused` (CUDA + Triton) only the logits chunk itself does.
    """
    x_new = torch.empty_like(x_t)
    x1_all = torch.empty_like(x_t)
    for start in range(0, x_t.numel(), chunk):
        sl = slice(start, start + chunk)
        cond, uncond = _as_pair(logits_fn(sl))
        if fused:
            from .triton_sampler import categorical_from_logits
            x1 = categorical_from_logits(cond, uncond, guidance, uniforms[0, sl])
        else:
            uncond = None if uncond is None else uncond.float()
            probs = torch.softmax(guided_logits(cond.float(), uncond, guidance), dim=-1)
            x1 = sample_from_weights(probs, uniforms[0, sl])
            del probs
        del cond, uncond
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
LogitPair = "tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor"


def _as_pair(logits) -> tuple[torch.Tensor, torch.Tensor | None]:
    return logits if isinstance(logits, tuple) else (logits, None)


def _fused_jump(path: MetricPath, x1, x_t, clocks: TokenClocks, sl: slice, uniforms) -> torch.Tensor:
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


def _jump(path: MetricPath, x_t: torch.Tensor, x1: torch.Tensor, clocks: TokenClocks, sl: slice,
          uniforms: torch.Tensor) -> torch.Tensor:
    dist = path.distances(x1)  # d(x, x1) for all x: [n, K]
    beta = clocks.beta[sl].to(dist.dtype).unsqueeze(-1)
    p_t = torch.softmax(-beta * dist, dim=-1)
    d_current = dist.gather(1, x_t.unsqueeze(-1))
    # Only candidates closer to x1 than the current token receive rate.
    rate = p_t.mul_((d_current - dist).clamp_min_(0))
    del dist
    rate.scatter_(1, x_t.unsqueeze(-1), 0.0)
    # The scan's last entry is the row total: a plain .sum() may split rows differently for different chunk
    # sizes on GPUs, and the jump test must not depend on the chunking.
    cdf = torch.cumsum(rate, dim=-1)
    del rate
    total = cdf[:, -1] * clocks.beta_dot[sl].to(cdf.dtype)
    jump_prob = 1 - torch.exp(-clocks.h[sl].to(cdf.dtype) * total)
    jumps = uniforms[0].to(cdf.dtype) < jump_prob
    return torch.where(jumps, sample_from_cdf(cdf, uniforms[1]), x_t)
