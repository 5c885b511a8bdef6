"""Ulysses sequence-parallel attention: a rank holding only its rows of the sequence swaps them for heads with one
`torch.distributed.all_to_all_single` per tensor, attends the whole sequence with 1/n of the heads through the
kernel it would use alone, and swaps back (uneven row counts allowed: URSA's 321 + T*h*w rows rarely divide).

Registered as the attention backend "ulysses" (backends.py); it is usable only while
parallel.distributed.sharded_attention has activated the shards of a forward, so nobody picks it by hand.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shards:
    group: object                # the sequence-parallel process group
    sizes: list                  # rows of every rank, in rank order
    inner: Callable              # the attention kernel on [B, H/n, S, D] q/k/v


_ACTIVE: contextvars.ContextVar[Optional[Shards]] = contextvars.ContextVar("ursa_ulysses_shards", default=None)


def activate(shards: Shards):
    return _ACTIVE.set(shards)


def deactivate(token) -> None:
    _ACTIVE.reset(token)


def is_active() -> bool:
    return _ACTIVE.get() is not None


def heads_to_sequence(x: torch.Tensor, shards: Shards) -> torch.Tensor:
    """[B, H, S_local, D] (all heads, my rows) -> [B, H/n, S, D] (my heads, all rows)."""
    batch, heads, rows, dim = x.shape
    n = len(shards.sizes)
    send = x.reshape(batch, n, heads // n, rows, dim).permute(1, 3, 0, 2, 4).contiguous()
    recv = x.new_empty(sum(shards.sizes), batch, heads // n, dim)
    dist.all_to_all_single(recv, send.view(n * rows, batch, heads // n, dim), output_split_sizes=shards.sizes,
                           input_split_sizes=[rows] * n, group=shards.group)
    if batch > 1:  # the [B, S, heads, D] layout the kernels are tuned for (free when B == 1)
        recv = recv.transpose(0, 1).contiguous().transpose(0, 1)
    return recv.permute(1, 2, 0, 3)


def sequence_to_heads(x: torch.Tensor, shards: Shards, rows: int) -> torch.Tensor:
    """[B, H/n, S, D] (my heads, all rows) -> [B, H, S_local, D] (all heads, my rows)."""
    batch, part, _, dim = x.shape
    n = len(shards.sizes)
    send = x.permute(2, 0, 1, 3).contiguous()
    recv = x.new_empty(n * rows, batch, part, dim)
    dist.all_to_all_single(recv, send, output_split_sizes=[rows] * n, input_split_sizes=shards.sizes,
                           group=shards.group)
    return recv.view(n, rows, batch, part, dim).permute(2, 0, 3, 1, 4).reshape(batch, n * part, rows, dim)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The attention backend: q [B, Hq, S_local, D], k/v [B, Hkv, S_local, D] -> [B, Hq, S_local, D]."""
    shards = _ACTIVE.get()
    rows = q.shape[2]
    q, k, v = (heads_to_sequence(x, shards) for x in (q, k, v))
    return sequence_to_heads(shards.inner(q, k, v), shards, rows)
