"""The metric probability path over a tokenizer codebook (docs/ARCHITECTURE.md, "The metric path").

p_t(x | x1) = softmax_x(-beta_t * d(x, x1)), with d the squared L2 distance between unit-normalised code vectors
and beta_t = c * (t / (1 - t))^alpha. beta_0 = 0 is uniform noise; beta -> inf as t -> 1 is the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def beta(t: torch.Tensor, c: float, alpha: float) -> torch.Tensor:
    t = torch.as_tensor(t)
    return c * (t / (1 - t)) ** alpha


def beta_dot(t: torch.Tensor, c: float, alpha: float) -> torch.Tensor:
    """d beta / dt = c * alpha * t^(alpha-1) / (1-t)^(alpha+1); defined as 0 at t = 0 (the reference's choice)."""
    t = torch.as_tensor(t)
    safe = torch.where(t > 0, t, torch.ones_like(t))
    value = c * alpha * safe ** (alpha - 1) / (1 - safe) ** (alpha + 1)
    return torch.where(t > 0, value, torch.zeros_like(value))


def sample_from_weights(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row of non-negative `weights` [n, K] with one uniform in [0, 1) per row."""
    return sample_from_cdf(torch.cumsum(weights, dim=-1), uniforms)


def sample_from_cdf(cdf: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return index.clamp_max_(cdf.shape[-1] - 1)


def velocity(path: "MetricPath", x_t: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The kinetic-optimal velocity u_t(x | x_t, x1) [n, K] at times t (one per token, or a scalar).

    u(x) = beta_dot_t * p_t(x | x1) * max(0, d(x_t, x1) - d(x, x1)) for x != x_t, u(x_t) = 0 (the rate of
    leaving x_t towards x; docs/ARCHITECTURE.md, "The metric path").
    """
    clock = path.clock(torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape))
    rates = path.jump_rates(x_t, x1, clock.beta.to(path.unit.device))
    return clock.beta_dot.to(rates).unsqueeze(-1) * rates


ELEMENTWISE_MAX_DIM = 16
T_MAX = 1 - 1e-12  # beta(1) is infinite: the clock reads t = 1 as just below it (a held token's certainty)


@dataclass(frozen=True)
class PathClock:
    """Where the path stands at times t: beta_t and d beta / dt (as flow_matching's SchedulerOutput)."""
    beta: torch.Tensor
    beta_dot: torch.Tensor


class MetricPath:
    """Distances and conditional probabilities on a codebook `emb` [K, D].

    Work is done in `compute_dtype` (fp32 by default: the [n, K] tensors are chunked, so precision is cheap).
    """

    def __init__(self, emb: torch.Tensor, c: float, alpha: float, eps: float = 1e-5,
                 compute_dtype: torch.dtype = torch.float32):
        unit = F.normalize(emb.double(), dim=-1, eps=eps)
        self.unit = unit.to(compute_dtype)
        self.sumsq = unit.pow(2).sum(-1).to(compute_dtype)  # 1, or 0 for an all-zero code (FSQ's centre)
        self.c = float(c)
        self.alpha = float(alpha)

    @property
    def codebook_size(self) -> int:
        return self.unit.shape[0]

    def clock(self, t: torch.Tensor) -> PathClock:
        """beta_t and d beta / dt of this path at times t (elementwise, in t's dtype)."""
        t = torch.as_tensor(t)
        return PathClock(beta(t.clamp(max=T_MAX), self.c, self.alpha), beta_dot(t, self.c, self.alpha))

    def with_params(self, c: float, alpha: float) -> "MetricPath":
        """A view of the same codebook with other schedule constants (no tensor is copied)."""
        clone = object.__new__(MetricPath)
        clone.__dict__.update(self.__dict__, c=float(c), alpha=float(alpha))
        return clone

    def to(self, device) -> "MetricPath":
        self.unit = self.unit.to(device)
        self.sumsq = self.sumsq.to(device)
        self._half = None
        return self

    def half_unit(self) -> torch.Tensor:
        """The unit codebook in fp16 (cached), for tensor-core distance matmuls on wide codebooks."""
        if getattr(self, "_half", None) is None or self._half.device != self.unit.device:
            self._half = self.unit.half()
        return self._half

    def distances(self, codes: torch.Tensor) -> torch.Tensor:
        """d(x, codes[i]) for every code x: [n, K]."""
        a = self.unit[codes]
        dist = self.sumsq[codes].unsqueeze(-1) + self.sumsq
        if a.shape[-1] <= ELEMENTWISE_MAX_DIM:
            # Narrow codes (FSQ's 6-D): D elementwise passes instead of a GEMM, whose rounding depends on how
            # many rows it gets; this keeps chunked and one-chunk runs token-identical on every device.
            for dim in range(a.shape[-1]):
                dist -= 2 * a[:, dim:dim + 1] * self.unit[:, dim]
        else:
            dist -= 2 * (a @ self.unit.T)
        return dist.clamp_min_(0)

    def log_probs(self, x1: torch.Tensor, beta_t: torch.Tensor) -> torch.Tensor:
        """log p_t(x | x1[i]) for every x: [n, K]; beta_t broadcasts over tokens."""
        return torch.log_softmax(-beta_t.unsqueeze(-1) * self.distances(x1), dim=-1)

    def jump_rates(self, x_t: torch.Tensor, x1: torch.Tensor, beta_t: torch.Tensor) -> torch.Tensor:
        """u(x) / beta_dot_t = p_t(x | x1) * max(0, d(x_t, x1) - d(x, x1)) with u(x_t) = 0: [n, K].

        The kinetic-optimal velocity without its beta_dot factor, which the jump step applies to the row total
        only (docs/ARCHITECTURE.md, "The jump step").
        """
        dist = self.distances(x1)  # d(x, x1) for all x: [n, K]
        p_t = torch.softmax(-beta_t.to(dist.dtype).unsqueeze(-1) * dist, dim=-1)
        d_current = dist.gather(1, x_t.unsqueeze(-1))
        # Only candidates closer to x1 than the current token receive rate.
        rate = p_t.mul_((d_current - dist).clamp_min_(0))
        del dist
        return rate.scatter_(1, x_t.unsqueeze(-1), 0.0)

    def sample(self, x1: torch.Tensor, t: torch.Tensor, uniforms: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Forward noising x_t ~ p_t(. | x1), token by token, never holding more than `chunk` rows of [n, K].

        `uniforms` (one per token, in [0, 1)) make the draw independent of the chunk size.
        """
        flat = x1.reshape(-1)
        t_flat = torch.as_tensor(t, dtype=self.unit.dtype, device=flat.device).expand(x1.shape).reshape(-1)
        u = uniforms.reshape(-1)
        out = torch.empty_like(flat)
        for start in range(0, flat.numel(), chunk):
            sl = slice(start, start + chunk)
            b = beta(t_flat[sl], self.c, self.alpha).to(self.unit.dtype)
            weights = torch.softmax(-b.unsqueeze(-1) * self.distances(flat[sl]), dim=-1)
            out[sl] = sample_from_weights(weights, u[sl])
        return out.view_as(x1)
