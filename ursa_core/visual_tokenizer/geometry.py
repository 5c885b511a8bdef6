"""How pixels map to latent tokens: the frame and size rules of the visual tokenizers."""
from __future__ import annotations

from dataclasses import dataclass

from .. import rules


@dataclass(frozen=True)
class VisualGeometry:
    """How pixels map to latent tokens, from `vae/config.json` (the pipeline's defaults are 4 and 8)."""
    temporal_stride: int = 4
    spatial_stride: int = 8
    image_only: bool = False
    fps: float = 12.0

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, h, w) latent tokens of a clip, or an InputError naming the bad value and the rule (ursa_core.rules)."""
        rules.frames(frames, self.temporal_stride, self.image_only)
        rules.size("height", height, self.spatial_stride)
        rules.size("width", width, self.spatial_stride)
        return (rules.latent_frames(frames, self.temporal_stride), height // self.spatial_stride,
                width // self.spatial_stride)

    def pixel_frames(self, latent_frames: int) -> int:
        return rules.pixel_frames(latent_frames, self.temporal_stride)
