"""The settings of one generation as one typed object: built once by a front end (the CLI's flags, a node's widgets,
a batch item, the `generate` keywords), checked by the rules module when built, and carried to the sampler.

`branches` is the one place that decides whether a step runs two transformer branches (conditional and
unconditional) or one: the loop, the memory estimate and the checks before a run all ask it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Optional

from .. import rules
from ..model.config import SchedulerConfig
from ..visual_tokenizer.geometry import VisualGeometry


def branches(guidance: float, t: float = 0.0, guidance_trunc: float = 1.0) -> int:
    """Transformer branches a step at clock t runs: 2 (conditional and unconditional, for classifier-free guidance)
    while guidance > 1 and t < guidance_trunc, else 1 (the conditional branch alone: guidance 1 is the identity)."""
    return 2 if guidance > 1 and t < guidance_trunc else 1


class FieldMapping(Mapping):
    """Read a frozen dataclass like a dict (`settings["steps"]`, `dict(settings)`, JSON), field by field."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))


@dataclass(frozen=True, eq=True)
class GenerationSettings(FieldMapping):
    """How one clip is sampled. `c`, `alpha`, `shift` None = the checkpoint's scheduler values; frames and sizes
    are checked against the checkpoint's strides when the clip is planned (they depend on its tokenizer)."""
    frames: int = 1
    height: int = 320
    width: int = 512
    steps: int = 25
    guidance: float = 7.0
    guidance_trunc: float = 0.9
    c: Optional[float] = None
    alpha: Optional[float] = None
    shift: Optional[float] = None
    motion: Optional[float] = None     # the video prompt prefix `motion=<score>, `; None: no prefix
    seed: int = 0
    sampler: str = "auto"              # auto, torch or triton (rules.SAMPLERS)
    skip_noop_steps: bool = True       # a step where no clock moves runs no forward
    chunk_tokens: Optional[int] = None  # tokens per solver chunk; None: sized to the device's logit budget

    def __post_init__(self):
        rules.steps(self.steps)
        rules.seed(self.seed)
        rules.motion(self.motion)
        rules.guidance(self.guidance, "guidance")
        rules.unit("guidance_trunc", self.guidance_trunc)
        for name in ("c", "alpha", "shift"):
            if getattr(self, name) is not None:
                rules.path_param(name, getattr(self, name))
        rules.sampler(self.sampler)
        if self.chunk_tokens is not None:
            rules.integer("chunk_tokens", self.chunk_tokens, 1, 1 << 40)

    @classmethod
    def build(cls, settings: Optional["GenerationSettings"] = None, **changes) -> "GenerationSettings":
        """`settings` (default: the defaults above) with `changes` applied; an unknown name is a TypeError."""
        return replace(settings or cls(), **changes)

    def latent_shape(self, geometry: VisualGeometry) -> tuple[int, int, int]:
        """(T, h, w) latent tokens of this clip under a tokenizer's strides: where frames and size become tokens,
        their rules checked against the checkpoint (one line naming the value if one is broken)."""
        return geometry.latent_shape(self.frames, self.height, self.width)

    def branches_at(self, t: float) -> int:
        return branches(self.guidance, t, self.guidance_trunc)

    @property
    def max_branches(self) -> int:
        """The branches the widest step runs (what memory must hold): 2 whenever guidance > 1."""
        return branches(self.guidance)

    def with_checkpoint_path(self, scheduler: SchedulerConfig) -> "GenerationSettings":
        """c, alpha and shift filled in from the checkpoint's scheduler config where they are None."""
        return replace(self, **{name: getattr(scheduler, name) for name in ("c", "alpha", "shift")
                                if getattr(self, name) is None})


@dataclass(frozen=True, eq=True)
class RunSettings(FieldMapping):
    """What `Generation.settings` holds: every setting as used (checkpoint values filled in, sampler and chunk size
    resolved) and what else the run depended on; read it like a dict, it repeats the run."""
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    guidance_trunc: float
    c: float
    alpha: float
    shift: float
    motion: Optional[float]
    seed: int
    sampler: str
    skip_noop_steps: bool
    chunk_tokens: int
    schedule_start: tuple[float, ...]
    hold: bool
    prompt: Any = None            # the prompt(s) as given, None when the caller passed prompt ids
    negative_prompt: Any = None
    parallel: Optional[dict] = None  # how ranks shared the run (None: one device)

    @classmethod
    def of(cls, settings: GenerationSettings, **run) -> "RunSettings":
        """`settings`' fields, those named in `run` replaced (resolved), with the run's other facts."""
        return cls(**{**{f.name: getattr(settings, f.name) for f in fields(settings)}, **run})
