"""Cheap pictures for the UI: predicted tokens as colours (no decoder run) and a schedule diagram."""
from __future__ import annotations

import torch

from ..path.schedule import FrameSchedule


def token_colors(unit_codebook: torch.Tensor, tokens: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """Tokens [h, w] -> an RGB preview [h*scale, w*scale, 3] in 0..1 from the first three codebook dimensions.

    Not the decoded image: a glance at layout and progress that costs a gather, not a visual-tokenizer decode.
    """
    vectors = unit_codebook[tokens.to(unit_codebook.device)].float()
    dims = vectors.shape[-1]
    rgb = vectors[..., :3] if dims >= 3 else vectors[..., :1].expand(*vectors.shape[:-1], 3)
    rgb = (rgb * 0.5 + 0.5).clamp(0, 1)
    return rgb.repeat_interleave(scale, 0).repeat_interleave(scale, 1).cpu()


def schedule_diagram(schedule: FrameSchedule, cell: int = 24, height: int = 48) -> torch.Tensor:
    """IMAGE [1, height, T*cell, 3]: one column per latent frame. Black = generated from noise; green = held
    exactly; amber, brighter for a later start time = a given frame noised to t0 that keeps refining."""
    columns = []
    for t0 in schedule.start:
        if t0 <= 0:
            color = torch.tensor([0.12, 0.12, 0.14])
        elif t0 >= 1 and schedule.hold:
            color = torch.tensor([0.2, 0.85, 0.3])
        else:
            color = torch.tensor([1.0, 0.75, 0.1]) * (0.35 + 0.65 * t0)
        column = color.expand(height, cell, 3).clone()
        filled = int(round(height * (1 - t0)))  # the dark top part shows how much noise is left
        column[:filled] *= 0.35
        column[:, -1] = 0.0  # separator
        columns.append(column)
    return torch.cat(columns, dim=1).unsqueeze(0)
