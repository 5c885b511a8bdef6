"""Time grids, start times and the clocks of every token.

`time_grid` is the reference's shifted grid (docs/ARCHITECTURE.md, "Time grid and shift"). `FrameSchedule` gives
every latent frame its own start time t0 (the paper's asynchronous timesteps, used here at inference): 0 = generate
from uniform noise, 1 = a given frame held exactly, in between = a given frame noised along the path to t0 that
keeps refining. `StartTimes` is the start time of every latent token, the one object the sampler reads (a frame
schedule spreads its frames' values over their tokens; a repaint mask sets them token by token, path/masks.py).
`FrameClocks` is where the clocks stand at one step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import torch

from .. import rules
from ..errors import InputError
from .metric_path import MetricPath


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The reference's time shift: t -> 1 - lam*sigma / (1 + (lam-1)*sigma) with sigma = 1 - t (lam = shift;
    lam > 1 spends more steps near t = 0, where the picture's layout is decided)."""
    sigma = 1 - torch.as_tensor(t, dtype=torch.float64)
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


def time_grid(steps: int, shift: float) -> torch.Tensor:
    """t_i = time_shift(i/N) for i = 0..N-1 (float64): the global clock at the start of each step."""
    steps, shift = rules.steps(steps), rules.path_param("shift", shift)
    return time_shift(torch.arange(steps, dtype=torch.float64) / steps, shift)


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
            rules.unit(f"start time of latent frame {i}", t0)

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
        return cls.keyframes(frames, interpolation_starts(_count(frames), start))

    @classmethod
    def extension(cls, frames: int, given: int, start: float = 1.0) -> "FrameSchedule":
        return cls.keyframes(frames, extension_starts(_count(frames), given, start))

    @classmethod
    def keyframes(cls, frames: int, starts: Mapping[int, float], hold: bool = True) -> "FrameSchedule":
        n = _count(frames)
        values = [0.0] * n
        for index, t0 in starts.items():
            values[frame_index(index, n)] = float(t0)
        return cls(tuple(values), hold)

    # --- queries ----------------------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return len(self.start)

    def held(self) -> list[int]:
        """Frames the sampler never touches."""
        return [i for i, t0 in enumerate(self.start) if t0 >= 1.0] if self.hold else []

    def check_frames(self, latent_frames: int) -> None:
        if self.num_frames != latent_frames:
            raise InputError(f"the schedule has {self.num_frames} latent frames but the clip has {latent_frames}; "
                             f"build it for {latent_frames} latent frames")


@dataclass(frozen=True, eq=False)
class StartTimes:
    """The start time t0 of every latent token [T, h, w] (float64), and whether tokens with t0 = 1 are held exactly
    (never resampled, not even by the last step).

    The one object the sampler reads for start times, whatever made them: a FrameSchedule is the special case of a
    map constant over each frame (`from_schedule`); a repaint mask sets tokens one by one (path/masks.py); both
    combine token by token (`combine`). The clocks and the set of tokens the sampler touches follow from it alone.
    """
    start: torch.Tensor
    hold: bool = True

    def __post_init__(self):
        start = torch.as_tensor(self.start)
        if start.ndim != 3 or start.numel() == 0 or not start.dtype.is_floating_point:
            raise InputError(f"start times must be a float map [latent frames, h, w], got {start.dtype} "
                             f"{list(start.shape)}")
        if not bool(((start >= 0) & (start <= 1)).all()):  # NaN fails too
            raise InputError("start times must lie in [0, 1] (0 = generated, 1 = held)")
        object.__setattr__(self, "start", start.to(torch.float64).contiguous())

    @classmethod
    def from_schedule(cls, schedule: FrameSchedule, latent_shape: Sequence[int]) -> "StartTimes":
        frames, height, width = latent_shape
        schedule.check_frames(frames)
        per_frame = torch.tensor(schedule.start, dtype=torch.float64).view(frames, 1, 1)
        return cls(per_frame.expand(frames, height, width), schedule.hold)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.start.shape)

    @property
    def per_token(self) -> torch.Tensor:
        """[T*h*w], flat like the tokens."""
        return self.start.flatten()

    def held(self) -> torch.Tensor:
        """[T*h*w] bool: the tokens the sampler never touches."""
        return self.per_token >= 1.0 if self.hold else torch.zeros_like(self.per_token, dtype=torch.bool)

    def given(self) -> torch.Tensor:
        """[T*h*w] bool: the tokens whose values must be supplied (t0 > 0)."""
        return self.per_token > 0

    def given_frames(self) -> list[int]:
        return torch.nonzero((self.start > 0).flatten(1).any(1)).flatten().tolist()

    def check_shape(self, latent_shape: Sequence[int]) -> None:
        if self.latent_shape != tuple(latent_shape):
            raise InputError(f"the start-time map is {list(self.latent_shape)} latent tokens (frames, h, w) but the "
                             f"clip is {list(latent_shape)}: build the schedule or mask for the sampler's frames, "
                             f"width and height")

    def combine(self, other: "StartTimes") -> "StartTimes":
        """Token by token the later start time (the more of a token is given, the more it is kept): a mask over
        keyframes keeps the keyframes, keyframes over a mask keep the unmasked canvas."""
        other.check_shape(self.latent_shape)
        if not (self.hold and other.hold):
            raise InputError("a repaint mask needs its kept tokens held: turn the frame schedule's hold on")
        return StartTimes(torch.maximum(self.start, other.start), True)

    def frame_wise(self) -> Optional[tuple[float, ...]]:
        """The per-frame start times when the map is constant over each frame (a frame schedule), else None."""
        flat = self.start.flatten(1)
        if not bool((flat == flat[:, :1]).all()):
            return None
        return tuple(float(v) for v in flat[:, 0])

    def describe(self):
        """For the run's record: the per-frame tuple of a frame schedule, else the whole map as nested lists."""
        return self.frame_wise() or self.start.tolist()


def as_start_times(schedule: "FrameSchedule | StartTimes | None", latent_shape: Sequence[int]) -> StartTimes:
    """Every token's start time for a clip of `latent_shape` from a frame schedule, a token map or nothing (every
    token from noise)."""
    if schedule is None:
        schedule = FrameSchedule.generate(latent_shape[0])
    if isinstance(schedule, FrameSchedule):
        return StartTimes.from_schedule(schedule, latent_shape)
    schedule.check_shape(latent_shape)
    return schedule


@dataclass(frozen=True)
class FrameClocks:
    """Every sampled token's clock at one step: beta_t, d beta/dt and the step size h (flat like the tokens).

    A token with start time t0 runs its own clock t_f = t0 + (1 - t0) t while the global clock reads t, so its
    step is h_f = (1 - t0) dt (docs/ARCHITECTURE.md, "Frame clocks"); with hold=False every token runs the
    global clock (the reference). The one home of per-token times: the sampler reads nothing else.
    """
    beta: torch.Tensor
    beta_dot: torch.Tensor
    h: torch.Tensor

    @classmethod
    def at_step(cls, start: torch.Tensor, hold: bool, grid: torch.Tensor, step: int,
                path: MetricPath) -> "FrameClocks":
        """The clocks of step `step` of `grid` for tokens starting at `start` [n] (float64, on the CPU)."""
        t_global = float(grid[step])
        dt = float(grid[step + 1] - grid[step]) if step + 1 < len(grid) else 0.0
        if hold:
            t, rate = start + (1 - start) * t_global, 1 - start
        else:
            t, rate = torch.full_like(start, t_global), torch.ones_like(start)
        clock = path.clock(t)
        return cls(clock.beta, clock.beta_dot, rate * dt)

    def idle(self) -> bool:
        """No token moves at this step (every beta_dot is 0: each clock stands at t = 0)."""
        return bool((self.beta_dot == 0).all())

    def for_batch(self, tokens: "torch.Tensor | slice", batch: int, device: torch.device) -> "FrameClocks":
        """The clocks of `tokens` (an index or a slice) for `batch` clips, flat in (batch, token) order, on
        `device`."""
        return FrameClocks(*(values[tokens].repeat(batch).to(device) for values in (self.beta, self.beta_dot, self.h)))

    @classmethod
    def constant(cls, n: int, beta_t: float, beta_dot_t: float, h: float, dtype=torch.float64,
                 device=None) -> "FrameClocks":
        """The same clock for n tokens (a single-frame step, as in kernel tests)."""
        return cls(*(torch.full((n,), float(v), dtype=dtype, device=device) for v in (beta_t, beta_dot_t, h)))


def _count(frames: int | Sequence | Iterable) -> int:
    n = int(frames)
    if n < 1:
        raise InputError(f"a schedule needs at least one latent frame, got {n}")
    return n


def frame_index(index: int, latent_frames: int) -> int:
    """A latent frame index in [0, T) from one in [-T, T) (negative counts from the end), or one line."""
    if not -latent_frames <= int(index) < latent_frames:
        raise InputError(f"keyframe index {index} is outside the clip's latent frames [0, {latent_frames - 1}] "
                         f"(or -{latent_frames}..-1 from the end)")
    return int(index) % latent_frames


def interpolation_starts(latent_frames: int, start: float) -> dict[int, float]:
    """First and last latent frame given: a clip of at least 2 latent frames (5 pixel frames)."""
    if latent_frames < 2:
        raise InputError(f"interpolation needs at least 2 latent frames (5 pixel frames), got {latent_frames}")
    return {0: start, latent_frames - 1: start}


def extension_starts(latent_frames: int, given: int, start: float) -> dict[int, float]:
    """The first `given` latent frames given (carried from the clip so far), at least one frame left to make."""
    if not 1 <= given < latent_frames:
        raise InputError(f"extension: given_frames={given} must be in [1, {latent_frames - 1}] for a clip of "
                         f"{latent_frames} latent frames")
    return {i: start for i in range(given)}


SCHEDULE_MODES = ("text-to-image", "text-to-video", "image-to-video", "interpolation", "extension",
                  "custom keyframes")
# The inputs only some modes read (the others ignore them): the node shows each in these modes only.
MODE_ONLY_INPUTS = {"given_frames": ("extension",), "keyframes": ("custom keyframes",)}


def parse_keyframes(text: str, latent_frames: int) -> dict[int, float]:
    """'0:1.0, 12:0.9, -1' -> {0: 1.0, 12: 0.9, T-1: 1.0}: latent frame index (negative from the end) and start
    time (default 1.0 = held)."""
    starts: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in text.replace(";", ",").split(","))):
        index_text, _, time_text = item.partition(":")
        try:
            index = int(index_text)
            t0 = float(time_text) if time_text.strip() else 1.0
        except ValueError:
            raise InputError(f"keyframe {item!r} is not 'index' or 'index:start_time' (e.g. '0:1.0, -1:0.9')") \
                from None
        starts[frame_index(index, latent_frames)] = rules.unit(f"start time of keyframe {item!r}", t0)
    if not starts:
        raise InputError("custom keyframes: give at least one 'index:start_time', e.g. '0:1.0, -1:1.0'")
    return starts


@dataclass(frozen=True)
class ScheduledTokens:
    """Start times (a FrameSchedule, or a token map from a repaint mask) plus the tokens they give ([B, T, h, w];
    tokens that are not given are 0). A repaint also carries the identity of the tokenizer of its source tokens and
    how its source pixels were fit to the canvas (visual_tokenizer.canvas.PixelFit, read by the composite)."""
    schedule: "FrameSchedule | StartTimes"
    given: "torch.Tensor | None"
    identity: Optional[dict] = None
    source_fit: Optional[object] = None


def _place(given: torch.Tensor, frame: int, source: "torch.Tensor | None", name: str, pick: int) -> None:
    if source is None:
        raise InputError(f"{name} tokens are needed for this mode")
    if tuple(source.shape[2:]) != tuple(given.shape[2:]):
        raise InputError(f"{name} tokens are {source.shape[2]}x{source.shape[3]} latents but the clip is "
                         f"{given.shape[2]}x{given.shape[3]}: encode the image at the sampler's width/height")
    given[:, frame] = source[:, pick]


def build_schedule(mode: str, latent_frames: int, *, start_time: float = 1.0, given_frames: int = 1,
                   keyframes: str = "", start_tokens=None, end_tokens=None, hold: bool = True) -> ScheduledTokens:
    """The schedule of a task, with given tokens taken from `start_tokens` / `end_tokens` ([B, T, h, w]).

    image-to-video: frame 0 <- first latent of start_tokens; interpolation: also frame T-1 <- last latent of
    end_tokens; extension: frames 0..k-1 <- the last k latents of start_tokens; custom keyframes: start_tokens
    covers the whole clip (T latents) or has one latent per keyframe, in order.
    """
    if mode not in SCHEDULE_MODES:
        raise InputError(f"mode {mode!r} is not one of {SCHEDULE_MODES}")
    if mode == "text-to-image" and latent_frames != 1:
        raise InputError(f"text-to-image makes 1 frame, but the clip has {latent_frames} latent frames")
    if mode in ("text-to-image", "text-to-video"):
        return ScheduledTokens(FrameSchedule.generate(latent_frames), None)
    starts = _mode_starts(mode, latent_frames, start_time, given_frames, keyframes)
    schedule = FrameSchedule.keyframes(latent_frames, starts, hold=hold)
    reference = start_tokens if start_tokens is not None else end_tokens
    if reference is None:
        raise InputError(f"mode {mode!r} needs start tokens (encode an image or pass a token clip)")
    given = torch.zeros(reference.shape[0], latent_frames, *reference.shape[2:], dtype=torch.long)
    _fill_given(mode, given, starts, start_tokens, end_tokens, given_frames)
    return ScheduledTokens(schedule, given)


def _mode_starts(mode, latent_frames, start_time, given_frames, keyframes) -> dict[int, float]:
    if mode == "image-to-video":
        return {0: start_time}
    if mode == "interpolation":
        return interpolation_starts(latent_frames, start_time)
    if mode == "extension":
        return extension_starts(latent_frames, given_frames, start_time)
    return parse_keyframes(keyframes, latent_frames)


def _fill_given(mode, given, starts, start_tokens, end_tokens, given_frames) -> None:
    if mode == "image-to-video":
        _place(given, 0, start_tokens, "start", 0)
    elif mode == "interpolation":
        _place(given, 0, start_tokens, "start", 0)
        _place(given, given.shape[1] - 1, end_tokens, "end", -1)
    elif mode == "extension":
        if start_tokens is None or start_tokens.shape[1] < given_frames:
            have = None if start_tokens is None else start_tokens.shape[1]
            raise InputError(f"extension needs start tokens with at least given_frames={given_frames} latent "
                             f"frames, got {have}")
        for i in range(given_frames):
            _place(given, i, start_tokens, "start", start_tokens.shape[1] - given_frames + i)
    else:
        frames = sorted(starts)
        if start_tokens is None or start_tokens.shape[1] not in (given.shape[1], len(frames)):
            have = None if start_tokens is None else start_tokens.shape[1]
            raise InputError(f"custom keyframes need start tokens with {given.shape[1]} latent frames (the whole "
                             f"clip) or {len(frames)} (one per keyframe), got {have}")
        for n, frame in enumerate(frames):
            _place(given, frame, start_tokens, "start", frame if start_tokens.shape[1] == given.shape[1] else n)
