"""Which model a checkpoint folder is, and what a setting left unset means for it: one table keyed by the model's
identity (docs/MODELS.md lists the sources of every row).

The rules (ursa_core.rules) say what values are allowed; this table says which value a run gets when the user gave
none. What a checkpoint carries itself (the metric path's c, alpha and shift in scheduler_config.json, the
tokenizer's strides in vae/config.json) is read from the checkpoint and never written here. A new checkpoint family
is one more row; the tiny random checkpoint is a row like the others.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .. import rules

if TYPE_CHECKING:   # importing this table needs no torch: the CLI's help shows its values
    from ..visual_tokenizer.geometry import VisualGeometry


@dataclass(frozen=True)
class ModelDefaults:
    height: int
    width: int
    frames: int          # the model's own clip: 49 frames (4 s at 12 fps) for the video models, 1 for image models
    image_steps: int
    video_steps: int
    guidance: float

    def steps(self, pixel_frames: int) -> int:
        return self.image_steps if pixel_frames == 1 else self.video_steps


# Keyed by the checkpoint's visual tokenizer and its training resolution, the part of a model's identity its defaults
# depend on (0.6B and 1.7B of one tokenizer share them: baaivision/URSA README tables). FSQ320: 49x320x512 videos in
# 50 steps, images in 25; IBQ1024: 1024^2 images in 25 steps (README quick start, evaluation scripts); IBQ512: 512^2
# (UDM-GRPO README: `--height 512 --width 512 --num_inference_steps 25`). Guidance 7 everywhere (README, evaluation
# scripts). The tiny random checkpoint samples small and fast: its outputs are noise whatever the settings.
MODEL_DEFAULTS = {
    "FSQ320": ModelDefaults(height=320, width=512, frames=49, image_steps=25, video_steps=50, guidance=7.0),
    "IBQ1024": ModelDefaults(height=1024, width=1024, frames=1, image_steps=25, video_steps=50, guidance=7.0),
    "IBQ512": ModelDefaults(height=512, width=512, frames=1, image_steps=25, video_steps=50, guidance=7.0),
    "tiny": ModelDefaults(height=64, width=64, frames=1, image_steps=8, video_steps=8, guidance=7.0),
}

# The RL-tuned transformers of UDM-GRPO (arXiv 2604.18518) are trained and evaluated without classifier-free guidance
# at 25 steps (their README's GenEval / PickScore sampling commands: --guidance_scale 1.0 --num_inference_steps 25):
# a preset replaces the model's defaults for those two settings; values the user gives still win.
PRESETS = {"none": {}, "rl_tuned": {"guidance": 1.0, "steps": 25}}

# Hugging Face repositories this pack knows: full checkpoint folders (size, tokenizer) and transformer weights that
# load over one of them (`--transformer-weights`, the loader's transformer_weights input).
CHECKPOINT_REPOS = {
    "BAAI/URSA-0.6B-FSQ320": ("0.6B", "FSQ320"),
    "BAAI/URSA-1.7B-FSQ320": ("1.7B", "FSQ320"),
    "BAAI/URSA-0.6B-IBQ1024": ("0.6B", "IBQ1024"),
    "BAAI/URSA-1.7B-IBQ1024": ("1.7B", "IBQ1024"),
    "BAAI/URSA-1.7B-IBQ512": ("1.7B", "IBQ512"),
}
WEIGHTS_REPOS = {
    "Yovecents/URSA-1.7B-IBQ512-UDMGRPO-GenEval": "BAAI/URSA-1.7B-IBQ512",
    "Yovecents/URSA-1.7B-IBQ512-UDMGRPO-PickScore": "BAAI/URSA-1.7B-IBQ512",
}

# Transformer widths of the released sizes (Qwen3-0.6B / Qwen3-1.7B dims; docs/MODELS.md).
SIZE_BY_HIDDEN = {1024: "0.6B", 2048: "1.7B"}


def _any_of(names) -> str:
    return "|".join(re.escape(name) for name in names)


# An official checkpoint name: URSA-<released size>-<tokenizer of a MODEL_DEFAULTS row> (the tiny row is no release).
_NAME = re.compile(rf"URSA-({_any_of(SIZE_BY_HIDDEN.values())})-({_any_of(v for v in MODEL_DEFAULTS if v != 'tiny')})"
                   r"(?![0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a folder holds: its size (None when the width is not a released one), the MODEL_DEFAULTS row and
    where that was read (shown by the CLI and the loader node, so a wrong guess is visible)."""
    size: Optional[str]
    variant: str
    source: str   # "folder name", "tiny random checkpoint" or "configs"

    @property
    def name(self) -> str:
        if self.variant == "tiny":
            return "tiny random URSA"
        return f"URSA-{self.size or '?'}-{self.variant}"

    @property
    def defaults(self) -> ModelDefaults:
        return MODEL_DEFAULTS[self.variant]

    def describe(self) -> str:
        """One short line (shown on the loader node): the model, and the defaults a run gets."""
        d = self.defaults
        guessed = " (read from its configs)" if self.source == "configs" else ""
        return (f"{self.name}{guessed}: {d.width}×{d.height}, {d.frames} frame{'s' * (d.frames != 1)}, "
                f"{d.steps(d.frames)} steps, cfg {d.guidance:g}")


def official_name(folder: Path) -> Optional[re.Match]:
    """The official name in the folder's name, or in a Hugging Face cache's `models--BAAI--<name>/snapshots/<hash>`."""
    names = [folder.name] + ([folder.parent.parent.name] if folder.parent.name == "snapshots" else [])
    for name in names:
        match = _NAME.search(name)
        if match:
            return match
    return None


def identify(folder: str | Path, hidden_size: int, geometry: VisualGeometry) -> ModelIdentity:
    """The identity of a checkpoint folder: the official name its folder carries (as `hf download ... --local-dir`
    and `ursa download` name it), else the tiny label, else the configs: the size from the transformer's width, the
    tokenizer from vae/config.json. The configs cannot tell IBQ512 from IBQ1024 (the same tokenizer; no resolution is
    written in the released configs that we know of), so an IBQ folder without the name reads as IBQ1024."""
    from .tiny import is_tiny   # tiny.py needs torch; this table does not

    folder = Path(folder)
    match = official_name(folder)
    if match:
        return ModelIdentity(match.group(1).upper(), match.group(2).upper(), "folder name")
    if is_tiny(folder):
        return ModelIdentity(None, "tiny", "tiny random checkpoint")
    return ModelIdentity(SIZE_BY_HIDDEN.get(hidden_size), "IBQ1024" if geometry.image_only else "FSQ320", "configs")


def check_preset(name: str) -> str:
    return rules.choice("preset", name, PRESETS)


@dataclass(frozen=True)
class Resolved:
    """Settings with every unset one filled in, and the names of those that came from the model or the preset."""
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    filled: tuple[str, ...]


def resolve(defaults: ModelDefaults, preset: str = "none", *, frames: Optional[int] = None,
            height: Optional[int] = None, width: Optional[int] = None, steps: Optional[int] = None,
            guidance: Optional[float] = None) -> Resolved:
    """A setting given (not None) is kept; an unset one comes from the preset, else the model's row. The one place
    where a default follows the model (the CLI's None flags and the sampler node's 0 widgets both end here)."""
    chosen = {"frames": frames, "height": height, "width": width, "steps": steps, "guidance": guidance}
    filled = tuple(name for name, value in chosen.items() if value is None)
    given = {name: value for name, value in chosen.items() if value is not None}
    values = {**PRESETS[check_preset(preset)], **given}
    values.setdefault("frames", defaults.frames)
    values.setdefault("height", defaults.height)
    values.setdefault("width", defaults.width)
    values.setdefault("steps", defaults.steps(values["frames"]))
    values.setdefault("guidance", defaults.guidance)
    return Resolved(filled=filled, **values)
