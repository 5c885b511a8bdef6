"""Every check of a generation that can be made before a weight loads: the options against this machine, the clip's
sizes against the checkpoint's strides and the memory estimate, all from the small json files."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import rules
from ..checkpoint.loader import check_layout, read_geometry, resolve_dtype
from ..model.config import TransformerConfig
from ..runtime import memory
from ..runtime.speed import SpeedOptions
from ..visual_tokenizer.geometry import VisualGeometry
from .settings import GenerationSettings


def checkpoint_rules(folder: Path) -> tuple[TransformerConfig, VisualGeometry]:
    """The transformer config and the tokenizer's frame/size rules, read from json (no weights)."""
    check_layout(folder)
    return TransformerConfig.from_json(folder / "transformer" / "config.json"), read_geometry(folder / "vae")


def check_options(dtype: str, speed: SpeedOptions, sampler: str, device: torch.device) -> torch.dtype:
    """The compute dtype `dtype` stands for on `device`, or one line naming the first option this machine cannot
    run (the attention kernel, the fused sampler)."""
    from ..solver import triton_sampler  # imports triton: only when a run is checked

    resolved = resolve_dtype(rules.dtype(dtype), device)
    rules.attention(speed.attention, device)
    rules.sampler(sampler, device, triton_sampler.available(device))
    return resolved


def check_clip(config: TransformerConfig, geometry: VisualGeometry, settings: GenerationSettings,
               speed: SpeedOptions, dtype: torch.dtype, device: torch.device) -> None:
    """The clip's frames and size against the checkpoint's tokenizer, and the memory the run needs with these
    options against what `device` has (ursa_core.runtime.memory); one line naming the first problem. `config` and
    `geometry`: checkpoint_rules of the checkpoint, read once by the caller."""
    latent = settings.latent_shape(geometry)
    need = memory.estimate(config, latent[0] * latent[1] * latent[2], dtype=dtype, device_type=device.type,
                           branches=settings.max_branches, low_vram=speed.streams,
                           math_attention=speed.attention == "math", blocks_on_gpu=speed.blocks_on_gpu,
                           fp8_weights=speed.weight_dtype != "default",
                           embeddings_on_device=speed.text_device in ("default", str(device)))
    memory.check_fits(need, device, f"--frames {settings.frames} at {settings.width}x{settings.height}",
                      low_vram=speed.streams)
