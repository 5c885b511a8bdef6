"""One generation on several ranks of torch.distributed: CFG parallel and Ulysses sequence parallel.

Ranks form a (cfg_ranks x sp_ranks) grid: rank r is guidance branch r // sp_ranks (0 conditional, 1 unconditional)
and sequence shard r % sp_ranks. Each rank embeds and runs only its shard of the rows `[prompt, BOV, visual]` (the whole sequence is
split evenly, prompt rows included: the prompt is a few hundred of ~33 600 rows, so splitting it costs nothing and
keeps shards equal). Around attention, the "ulysses" backend swaps sequence for heads with one
`torch.distributed.all_to_all_single` per tensor (every rank then attends the whole sequence with 1/sp of the
heads), then swaps back. Rotary angles are sliced from the global positions, so a row turns as it would in one
process. After the stack, each rank holds the final hidden states of the tokens its rows predict; the two branch
ranks of a shard exchange them (all_gather) and both apply guidance, draw the same CPU uniforms and take the same
jump on that shard; the shards then all_gather the new tokens. Unguided steps (t >= guidance_trunc: about a tenth
of a video's steps) have one branch: instead of running it twice, every rank of the grid takes a shard of it
(cfg_ranks x sp_ranks ranks, when the KV heads divide by that many; else the branch ranks repeat their sp shard).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .. import rules
from ..attention import backends as attention
from ..attention import ulysses
from ..errors import LaunchError
from ..model.sequence import predicting_positions
from ..sampling.runners import SingleDevice
from .ranks import RankSession


@dataclass
class Layout:
    """This rank's place in the (cfg_ranks x sp_ranks) grid and the process groups of its row and column."""
    cfg_ranks: int = 1                    # CFG-parallel ranks: 2 (one guidance branch each) or 1
    sp_ranks: int = 1                     # sequence-parallel ranks of each branch
    branch: int = 0                       # this rank's guidance branch (0 conditional, 1 unconditional)
    shard: int = 0                        # this rank's sequence shard
    branch_group: Optional[object] = None  # the ranks of this shard's branches (exchange hidden states)
    shard_group: Optional[object] = None   # the ranks of this branch's shards (Ulysses all-to-all)

    @property
    def world(self) -> int:
        return self.cfg_ranks * self.sp_ranks

    def runner(self, model, plan):
        """This rank's branch runner for one planned clip (sampling.runners.RunnerFactory)."""
        if self.world == 1:
            return SingleDevice().runner(model, plan)
        return ParallelRunner(self, model.config, plan.active, plan.latent_shape, model.device)

    def describe(self) -> dict | None:
        return dict(cfg_ranks=self.cfg_ranks, sp_ranks=self.sp_ranks) if self.world > 1 else None


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def build_layout(mode: str, kv_heads: int) -> Layout:
    """The grid for `mode` (rules.PARALLEL_MODES) over the initialised process group; every rank must call this
    in the same order (new_group is collective). A world size or head split the mode cannot use is an InputError."""
    cfg_ranks, sp_ranks = rules.parallel_layout(mode, world_size(), kv_heads)
    rank = dist.get_rank() if cfg_ranks * sp_ranks > 1 else 0
    layout = Layout(cfg_ranks, sp_ranks, rank // sp_ranks, rank % sp_ranks)
    for branch in range(cfg_ranks if sp_ranks > 1 else 0):
        group = dist.new_group([branch * sp_ranks + shard for shard in range(sp_ranks)])
        if branch == layout.branch:
            layout.shard_group = group
    for shard in range(sp_ranks if cfg_ranks > 1 else 0):
        group = dist.new_group([branch * sp_ranks + shard for branch in range(cfg_ranks)])
        if shard == layout.shard:
            layout.branch_group = group
    return layout


def shard_sizes(rows: int, parts: int) -> list[int]:
    return [rows // parts + (r < rows % parts) for r in range(parts)]


@contextlib.contextmanager
def sharded_attention(transformer, group, sizes: list):
    """Every layer attends through "ulysses" (around its own backend) for the duration of one forward."""
    inner = transformer.attn_implementation
    token = ulysses.activate(ulysses.Shards(group, sizes, attention.attention_function(inner)))
    transformer.set_attention("ulysses")
    try:
        yield
    finally:
        transformer.set_attention(inner)
        ulysses.deactivate(token)


@dataclass(frozen=True)
class RowSplit:
    """The sequence rows split over the `len(sizes)` ranks of `group` (None: every rank); this rank holds
    rows [start, stop) and samples the active tokens `local` they predict (rows `keep` of its shard)."""
    group: object
    sizes: list
    start: int
    stop: int
    local: torch.Tensor     # indices into plan.active
    keep: torch.Tensor      # their rows within this rank's shard
    counts: list            # tokens sampled by each rank of the group


def row_split(group, parts: int, index: int, rows: int, positions: torch.Tensor, device) -> RowSplit:
    sizes = shard_sizes(rows, parts)
    starts = [sum(sizes[:r]) for r in range(parts)]
    mine = (positions >= starts[index]) & (positions < starts[index] + sizes[index])
    counts = [int(((positions >= a) & (positions < a + n)).sum()) for a, n in zip(starts, sizes)]
    return RowSplit(group, sizes, starts[index], starts[index] + sizes[index], torch.nonzero(mine).squeeze(1),
                    (positions[mine] - starts[index]).to(device), counts)


class ParallelRunner:
    """The branch runner (sampling.runners.BranchRunner) of a (cfg_ranks x sp_ranks) grid: runs this rank's branch on
    its rows, exchanges hidden states with the other branch, and gathers the tokens every shard sampled.

    Guided steps split the rows over the sp ranks of each branch. Unguided steps (t >= guidance_trunc, or no
    guidance at all) have one branch, so the whole grid splits the rows instead (every rank) when the KV heads
    divide by that many; otherwise both branch ranks run the same shard.
    """

    def __init__(self, layout: Layout, config, active: torch.Tensor, latent_shape, device: torch.device):
        self.layout, self.device = layout, device
        rows = config.max_prompt_length + 1 + latent_shape[0] * latent_shape[1] * latent_shape[2]
        positions = predicting_positions(config, active)
        self.guided = row_split(layout.shard_group, layout.sp_ranks, layout.shard, rows, positions, device)
        self.unguided = self.guided
        if layout.cfg_ranks > 1 and config.num_key_value_heads % layout.world == 0:
            self.unguided = row_split(None, layout.world, layout.branch * layout.sp_ranks + layout.shard, rows,
                                      positions, device)

    def split(self, branches: int) -> RowSplit:
        return self.guided if branches == 2 else self.unguided

    def sampled_here(self, branches: int) -> torch.Tensor:
        return self.split(branches).local

    def _forward(self, transformer, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 split: RowSplit) -> torch.Tensor:
        if len(split.sizes) == 1:
            return transformer.hidden_states(ids, cos, sin, split.keep)
        rows = slice(split.start, split.stop)
        with sharded_attention(transformer, split.group, split.sizes):
            return transformer.hidden_states(ids[:, rows], cos[rows], sin[rows], split.keep)

    def hidden_states(self, transformer, ids: list, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """[branches, B * local tokens, hidden] for the branches `ids` (cond, uncond) of this rank's shard."""
        split = self.split(len(ids))
        if len(ids) == 2 and self.layout.cfg_ranks == 2:
            mine = self._forward(transformer, ids[self.layout.branch], cos, sin, split).flatten(0, 1).contiguous()
            both = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(both, mine, group=self.layout.branch_group)
            return torch.stack(both)
        hidden = self._forward(transformer, torch.cat(ids, 0), cos, sin, split)
        return hidden.reshape(len(ids), -1, hidden.shape[-1])

    def gather(self, values: torch.Tensor, branches: int) -> torch.Tensor:
        """[B, local tokens] sampled here -> [B, active tokens] of every shard (in token order), on the CPU."""
        split = self.split(branches)
        if len(split.sizes) == 1:
            return values.cpu()
        padded = values.new_zeros(values.shape[0], max(split.counts))
        padded[:, :values.shape[1]] = values
        parts = [torch.empty_like(padded) for _ in split.counts]
        dist.all_gather(parts, padded, group=split.group)
        return torch.cat([p[:, :n].cpu() for p, n in zip(parts, split.counts)], dim=1)


def launched_world() -> int:
    """The number of ranks torchrun started (1 without torchrun), known before any process group exists."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def join_launch() -> Optional[RankSession]:
    """This process's session in a torchrun launch (the shared store and the watch that stops every rank when one
    fails), or None for a single process. Made before any input check, so an error every rank finds is one line."""
    if launched_world() == 1:
        return None
    try:
        return RankSession.from_env()
    except (RuntimeError, ValueError, KeyError) as exc:   # DistStoreError, DistNetworkError, a missing variable
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]   # torch appends its C++ stack
        raise LaunchError(f"cannot join the torchrun launch (MASTER_ADDR/MASTER_PORT): {reason}") from None


def process_device(device_option: str = "auto", session: Optional[RankSession] = None) -> torch.device:
    """The device this process runs on, and so the one its checks ask about: in a launch (see join_launch) the
    rank's own (auto is cuda:LOCAL_RANK: rules.rank_device), else rules.device(device_option)."""
    if session is None:
        return rules.device(device_option)
    return rules.rank_device(device_option, session.local_rank, session.world)


def init_from_env(device_option: str = "auto", session: Optional[RankSession] = None
                  ) -> tuple[int, int, torch.device]:
    """(rank, world, device) of this process (process_device). In a launch joins its process group on the
    session's store: NCCL with cuda:LOCAL_RANK, gloo on the CPU. A single process gets no process group."""
    device = process_device(device_option, session)
    if session is None:
        return 0, 1, device
    if not dist.is_initialized():
        session.start_process_group(device)
    return session.rank, session.world, device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish(session: Optional[RankSession] = None) -> None:
    """Leave the process group (after the last collective of the run) and the launch."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if session is not None:
        session.close()
