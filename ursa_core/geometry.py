"""How pixels map to latent tokens: the frame and size rules of the visual tokenizers."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class VisualGeometry:
    """How pixels map to latent tokens, from `vae/config.json` (the pipeline's defaults are 4 and 8)."""
    temporal_stride: int = 4
    spatial_stride: int = 8
    image_only: bool = False
    fps: float = 12.0

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        if self.image_only and frames != 1:
            raise InputError(f"frames={frames}: this checkpoint's image tokenizer only makes single images (frames=1)")
        if frames < 1 or (frames - 1) % self.temporal_stride:
            raise InputError(f"frames={frames} is not allowed: the video tokenizer needs 1 + "
                             f"{self.temporal_stride}k frames (1, {1 + self.temporal_stride}, "
                             f"{1 + 2 * self.temporal_stride}, ..., 49)")
        for name, value in (("height", height), ("width", width)):
            if value < self.spatial_stride or value % self.spatial_stride:
                raise InputError(f"{name}={value} is not allowed: it must be a positive multiple of "
                                 f"{self.spatial_stride} (the tokenizer stride)")
        return (frames - 1) // self.temporal_stride + 1, height // self.spatial_stride, width // self.spatial_stride

    def pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * self.temporal_stride + 1
