"""Where the transformer branches of a step run: the seam between the sampling loop and the devices.

The loop asks a `BranchRunner` three things each step, the same way whatever runs them: which active tokens are
sampled here, the final hidden states of those tokens for the branches of the step (conditional, and unconditional
under guidance), and every token's new value once each place sampled its own. `SingleDevice` runs everything on the
model's device; `parallel.distributed.Layout` shares one clip between torchrun ranks (CFG and/or sequence
parallel). Another placement (an in-process device split, one branch per GPU) is one more `RunnerFactory`.
"""
from __future__ import annotations

from typing import Protocol, Union

import torch

from ..model.sequence import predicting_positions

TokenIndex = Union[torch.Tensor, slice]


class BranchRunner(Protocol):
    def sampled_here(self, branches: int) -> TokenIndex:
        """Indices into the plan's active tokens that this process samples in a step of `branches` branches."""

    def hidden_states(self, transformer, ids: list[torch.Tensor], cos: torch.Tensor,
                      sin: torch.Tensor) -> torch.Tensor:
        """[branches, B * tokens sampled here, hidden]: final-normed states of the branches `ids` (cond first)."""

    def gather(self, values: torch.Tensor, branches: int) -> torch.Tensor:
        """[B, tokens sampled here] -> [B, active tokens] on the CPU (every place's part, in token order)."""


class RunnerFactory(Protocol):
    def runner(self, model, plan) -> BranchRunner:
        """The runner of one planned clip (`plan`: a sampling.generate.GenerationPlan)."""

    def describe(self) -> dict | None:
        """How the run was shared, for `Generation.settings["parallel"]`; None on one device."""


class SingleDeviceRunner:
    """Every branch in one batch on the model's device; every active token is sampled here."""

    # Nothing inside a step talks to another device, so a step may be captured as a CUDA graph (runtime/graphs.py).
    capturable = True

    def __init__(self, keep: torch.Tensor):
        self.keep = keep  # the sequence rows whose outputs predict the active tokens

    def sampled_here(self, branches: int) -> TokenIndex:
        return slice(None)

    def hidden_states(self, transformer, ids, cos, sin):
        hidden = transformer.hidden_states(torch.cat(ids, 0), cos, sin, self.keep)
        return hidden.reshape(len(ids), ids[0].shape[0] * self.keep.numel(), -1)

    def gather(self, values: torch.Tensor, branches: int) -> torch.Tensor:
        return values.cpu()


class SingleDevice:
    """The default placement: the whole clip on the model's device."""

    def runner(self, model, plan) -> SingleDeviceRunner:
        return SingleDeviceRunner(predicting_positions(model.config, plan.active).to(model.device))

    def describe(self) -> dict | None:
        return None
