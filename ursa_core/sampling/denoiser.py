"""The model as the solver sees it: current tokens in, guided logits of the tokens sampled here out, chunk by chunk
(as flow_matching's ModelWrapper stands between its solver and the network)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..model.sequence import sequence_ids
from .runners import BranchRunner


def guided_logits(transformer, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guided logits z_u + g (z_c - z_u), computed in hidden-state space.

    lm_head is linear without bias, so guiding the hidden states (in fp32) and projecting once equals guiding the
    logits while running the [tokens, K] head for one branch instead of two. This is the only guidance there is.
    """
    cond, uncond_32 = cond.float(), uncond.float()
    return transformer.visual_logits((uncond_32 + guidance * (cond - uncond_32)).to(uncond.dtype))


HEAD_BLOCK = 1024  # rows per lm_head matmul, aligned to the token index


def head_in_blocks(head: Callable[[slice], torch.Tensor], rows: int, sl: slice) -> torch.Tensor:
    """Logits of rows `sl`, always computed in the same HEAD_BLOCK-aligned matmuls whatever the chunk size.

    BLAS kernels are chosen by matrix shape and round differently per shape; fixed blocks keep every row's logits
    bit-identical between chunk sizes, so a chunked run gives the same tokens as a one-chunk run on GPUs too.
    """
    start, stop = sl.start, min(sl.stop, rows)
    parts = []
    for block in range(start - start % HEAD_BLOCK, stop, HEAD_BLOCK):
        logits = head(slice(block, min(block + HEAD_BLOCK, rows)))
        parts.append(logits[max(start - block, 0):stop - block])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class LogitsSource:
    """`source(rows)` -> the logits [len(rows), K] of those rows of one step's hidden states: guided when the step
    ran two branches, the conditional branch's own otherwise."""

    def __init__(self, transformer, hidden: torch.Tensor, guidance: float):
        self.transformer, self.hidden, self.guidance = transformer, hidden, guidance

    def __call__(self, rows: slice) -> torch.Tensor:
        return head_in_blocks(self._head, self.hidden.shape[1], rows)

    def _head(self, rows: slice) -> torch.Tensor:
        if self.hidden.shape[0] == 1:
            return self.transformer.visual_logits(self.hidden[0, rows])
        return guided_logits(self.transformer, self.hidden[0, rows], self.hidden[1, rows], self.guidance)


class Denoiser:
    """Runs the transformer on the current tokens through a branch runner and hands the logits to the solver."""

    def __init__(self, model, cond_ids: torch.Tensor, uncond_ids: Optional[torch.Tensor],
                 latent_shape: tuple[int, int, int], runner: BranchRunner):
        self.transformer, self.config, self.runner = model.transformer, model.config, runner
        self.prompts = [ids.to(model.device) for ids in (cond_ids, uncond_ids) if ids is not None]
        self.cos, self.sin = model.transformer.rotary_tables(latent_shape)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, branches: int, guidance: float) -> LogitsSource:
        """The logits of the step's branches for `tokens` ([B, T, h, w] or flat [B, T*h*w])."""
        ids = [sequence_ids(self.config, prompt, tokens) for prompt in self.prompts[:branches]]
        return LogitsSource(self.transformer, self.runner.hidden_states(self.transformer, ids, self.cos, self.sin),
                            guidance)
