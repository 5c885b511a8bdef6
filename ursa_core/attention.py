"""Attention kernels for the bidirectional URSA stack: PyTorch SDPA (auto or a pinned backend) and FlexAttention.

All take q [B, Hq, S, D], k/v [B, Hkv, S, D] and return [B, Hq, S, D]; none uses a mask.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import InputError

BACKENDS = ("auto", "flash", "cudnn", "efficient", "math", "flex")


def _expand_kv(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    groups = q.shape[1] // kv.shape[1]
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


def _sdpa_with(backend) -> Callable:
    from torch.nn.attention import sdpa_kernel

    def attend(q, k, v):
        with sdpa_kernel([backend]):
            # Not every backend takes enable_gqa; expanding KV heads is exact and cheap next to attention.
            return F.scaled_dot_product_attention(q, _expand_kv(q, k), _expand_kv(q, v))
    return attend


def _flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)

    def attend(q, k, v):
        return compiled(q, k, v, enable_gqa=q.shape[1] != k.shape[1])
    return attend


def make_attention(backend: str = "auto") -> Callable | None:
    """The attention function for `backend`; None means the model's default (SDPA, PyTorch picks the kernel)."""
    if backend not in BACKENDS:
        raise InputError(f"attention backend {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return None
    if backend == "flex":
        return _flex()
    from torch.nn.attention import SDPBackend
    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return _sdpa_with(kinds[backend])


@functools.lru_cache(maxsize=None)
def usable_backends(device: str) -> tuple[str, ...]:
    """The backends that run on `device` with this torch build: each SDPA kernel is tried once on a tiny input
    (a kernel the GPU or build lacks raises), flex needs a GPU with Triton. 'auto' and 'math' always work."""
    dev = torch.device(device)
    q = torch.zeros(1, 2, 16, 64, device=dev, dtype=torch.float32 if dev.type == "cpu" else torch.float16)
    usable = ["auto"]
    for backend in ("flash", "cudnn", "efficient", "math"):
        try:
            with warnings.catch_warnings():  # SDPA warns why a kernel was not usable before raising
                warnings.simplefilter("ignore")
                make_attention(backend)(q, q[:, :1], q[:, :1])
        except Exception:  # noqa: BLE001 - a probe: any failure means "not usable here", never a broken node list
            continue
        usable.append(backend)
    if dev.type == "cuda" and importlib.util.find_spec("triton") is not None:
        usable.append("flex")
    return tuple(usable)
