"""What a setting left unset means for each checkpoint: one table keyed by the model's identity.

The rules (ursa_core.rules) say what values are allowed; this table says which value a run gets when the user gave
none. A new checkpoint family (another size, another tokenizer resolution) is one more row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # importing this table needs no torch: the CLI's help shows its values
    from ..visual_tokenizer.geometry import VisualGeometry


@dataclass(frozen=True)
class ModelDefaults:
    height: int
    width: int
    image_steps: int
    video_steps: int

    def steps(self, pixel_frames: int) -> int:
        return self.image_steps if pixel_frames == 1 else self.video_steps


# The reference's settings per checkpoint: 320x512 videos in 50 steps (FSQ320), 1024x1024 images in 25 (IBQ1024);
# the tiny random checkpoint samples small and fast (its outputs are noise whatever the settings).
MODEL_DEFAULTS = {
    "URSA-1.7B-FSQ320": ModelDefaults(height=320, width=512, image_steps=25, video_steps=50),
    "URSA-1.7B-IBQ1024": ModelDefaults(height=1024, width=1024, image_steps=25, video_steps=50),
    "tiny": ModelDefaults(height=64, width=64, image_steps=8, video_steps=8),
}


def model_family(folder: Path, geometry: VisualGeometry) -> str:
    """The row of MODEL_DEFAULTS a checkpoint folder reads: the tiny random checkpoint by its label, the others by
    their visual tokenizer (an image-only tokenizer is IBQ)."""
    from .tiny import is_tiny

    if is_tiny(folder):
        return "tiny"
    return "URSA-1.7B-IBQ1024" if geometry.image_only else "URSA-1.7B-FSQ320"


def defaults_for(folder: Path, geometry: VisualGeometry) -> ModelDefaults:
    return MODEL_DEFAULTS[model_family(folder, geometry)]
