"""Sliding-window video extension that carries tokens between windows (pixels are never re-encoded).

Each window generates `window` latent frames; its first `overlap` frames are the last `overlap` latent frames of the
clip so far (held, or noised to `carry_start` so they may adjust), the rest are new and appended.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch

from ..checkpoint.loader import URSAModel
from ..errors import InputError
from ..path.schedule import FrameSchedule
from .generate import StepInfo, generate
from .settings import GenerationSettings


@dataclass(frozen=True)
class WindowPlan:
    windows: int
    window_latents: int
    overlap: int

    def check(self) -> None:
        if self.windows < 1:
            raise InputError(f"windows={self.windows}: at least 1 window is needed")
        if not 1 <= self.overlap < self.window_latents:
            raise InputError(f"overlap={self.overlap} latent frames is not allowed: it must be in "
                             f"[1, {self.window_latents - 1}] for a window of {self.window_latents} latent frames")


@dataclass
class WindowInfo:
    """Callback payload: which window, and the step inside it."""
    window: int
    windows: int
    step: StepInfo


def window_prompts(prompts: Sequence[str], windows: int) -> list[str]:
    """Prompt per window: the i-th line, the last one repeating when there are fewer lines than windows."""
    lines = [p for p in prompts if p.strip()]
    if not lines:
        raise InputError("at least one non-empty prompt is needed for extension")
    return [lines[min(i, len(lines) - 1)] for i in range(windows)]


def extend_clip(model: URSAModel, tokens: torch.Tensor, prompts: Sequence[str], plan: WindowPlan,
                settings: Optional[GenerationSettings] = None, *, negative_prompt: str = "", carry_start: float = 1.0,
                callback: Optional[Callable[[WindowInfo], None]] = None, parallel=None, **changes) -> torch.Tensor:
    """Append `windows * (window - overlap)` latent frames to `tokens` [B, T, h, w]; returns the whole clip.

    `settings` (keywords change single fields, as for `generate`) sample every window: frames and size come from the
    plan and the clip, window w uses seed + w. A callback exception stops between steps; the frames of finished
    windows are in the returned clip only when it completes. `parallel` (a sampling.runners.RunnerFactory) places
    every window's generation, as for `generate`.
    """
    plan.check()
    settings = GenerationSettings.build(settings, **changes)
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 4 or tokens.shape[1] < plan.overlap:
        raise InputError(f"the clip to extend must be tokens [B, T, h, w] with T >= overlap={plan.overlap}, "
                         f"got {list(tokens.shape)}")
    height, width = (d * model.geometry.spatial_stride for d in tokens.shape[2:])
    settings = replace(settings, frames=model.geometry.pixel_frames(plan.window_latents), height=height, width=width)
    schedule = FrameSchedule.extension(plan.window_latents, plan.overlap, start=carry_start)
    per_window = window_prompts(prompts, plan.windows)
    clip = tokens
    for w in range(plan.windows):
        given = torch.zeros(clip.shape[0], plan.window_latents, *clip.shape[2:], dtype=torch.long)
        given[:, :plan.overlap] = clip[:, -plan.overlap:]
        step_cb = None if callback is None else (lambda info, w=w: callback(WindowInfo(w, plan.windows, info)))
        window = generate(model, [per_window[w]] * clip.shape[0], negative_prompt,
                          replace(settings, seed=settings.seed + w), schedule=schedule, given_tokens=given,
                          callback=step_cb, parallel=parallel).tokens
        clip = torch.cat([clip[:, :-plan.overlap], window], dim=1) if carry_start < 1 else \
            torch.cat([clip, window[:, plan.overlap:]], dim=1)
    return clip
