"""Time grids and per-frame clocks.

`time_grid` is the reference's shifted grid (ursa.md §4.2). `FrameSchedule` gives every latent frame its own start
time t0 (the paper's asynchronous timesteps, used here at inference): 0 = generate from uniform noise, 1 = a given
frame held exactly, in between = a given frame noised along the path to t0 that keeps refining.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from .errors import InputError


def time_grid(steps: int, shift: float) -> torch.Tensor:
    """t_i = 1 - lam*sigma / (1 + (lam-1)*sigma), sigma = 1 - i/N, for i = 0..N-1 (float64)."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise InputError(f"shift (lambda) must be > 0, got {shift}")
    sigma = 1 - torch.arange(steps, dtype=torch.float64) / steps
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class FrameSchedule:
    """Start time t0 of every latent frame, plus whether t0 == 1 frames stay exactly as given.

    hold=False reproduces the reference pipeline: given frames are only an initialisation, every frame runs the
    same global clock, and the final step re-samples them.
    """
    start: tuple[float, ...]
    hold: bool = True

    def __post_init__(self):
        if not self.start:
            raise InputError("a FrameSchedule needs at least one frame")
        for i, t0 in enumerate(self.start):
            if not 0.0 <= float(t0) <= 1.0:
                raise InputError(f"frame {i}: start time {t0} is outside [0, 1]")

    # --- constructors for the usual tasks -------------------------------------------------------------------
    @classmethod
    def generate(cls, frames: int) -> "FrameSchedule":
        """T2I / T2V: every frame from noise."""
        return cls(tuple(0.0 for _ in range(_count(frames))))

    @classmethod
    def image_to_video(cls, frames: int, start: float = 1.0) -> "FrameSchedule":
        return cls.keyframes(frames, {0: start})

    @classmethod
    def interpolation(cls, frames: int, start: float = 1.0) -> "FrameSchedule":
        n = _count(frames)
        if n < 2:
            raise InputError(f"interpolation needs at least 2 latent frames, got {n}")
        return cls.keyframes(n, {0: start, n - 1: start})

    @classmethod
    def extension(cls, frames: int, given: int, start: float = 1.0) -> "FrameSchedule":
        n = _count(frames)
        if not 1 <= given < n:
            raise InputError(f"extension: the number of given latent frames must be in [1, {n - 1}], got {given}")
        return cls.keyframes(n, {i: start for i in range(given)})

    @classmethod
    def keyframes(cls, frames: int, starts: Mapping[int, float], hold: bool = True) -> "FrameSchedule":
        n = _count(frames)
        values = [0.0] * n
        for index, t0 in starts.items():
            i = int(index) + n if int(index) < 0 else int(index)
            if not 0 <= i < n:
                raise InputError(f"keyframe index {index} is outside the clip's latent frames [0, {n - 1}]")
            values[i] = float(t0)
        return cls(tuple(values), hold)

    # --- queries ----------------------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return len(self.start)

    def given(self) -> list[int]:
        """Latent frames whose tokens must be supplied."""
        return [i for i, t0 in enumerate(self.start) if t0 > 0]

    def held(self) -> list[int]:
        """Frames the sampler never touches."""
        return [i for i, t0 in enumerate(self.start) if t0 >= 1.0] if self.hold else []

    def frame_times(self, t: float) -> torch.Tensor:
        """Each frame's own time when the global clock reads t (float64, [T])."""
        t0 = torch.tensor(self.start, dtype=torch.float64)
        if not self.hold:
            return torch.full_like(t0, float(t))
        return t0 + (1 - t0) * t

    def frame_rates(self) -> torch.Tensor:
        """d(frame time)/d(global time): each frame's step size h is this times the global step."""
        t0 = torch.tensor(self.start, dtype=torch.float64)
        return torch.ones_like(t0) if not self.hold else 1 - t0

    def check_frames(self, latent_frames: int) -> None:
        if self.num_frames != latent_frames:
            raise InputError(f"the schedule has {self.num_frames} latent frames but the clip has {latent_frames}; "
                             f"build it for {latent_frames} latent frames")

    def describe(self) -> str:
        return ", ".join(f"{i}:{t0:g}" for i, t0 in enumerate(self.start))


def _count(frames: int | Sequence | Iterable) -> int:
    n = int(frames)
    if n < 1:
        raise InputError(f"a schedule needs at least one latent frame, got {n}")
    return n
