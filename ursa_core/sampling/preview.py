"""Cheap pictures for the UI: predicted tokens as colours (no decoder run) and a schedule diagram."""
from __future__ import annotations

import torch

from ..path.schedule import FrameSchedule, StartTimes


def token_colors(unit_codebook: torch.Tensor, tokens: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """Tokens [h, w] -> an RGB preview [h*scale, w*scale, 3] in 0..1 from the first three codebook dimensions.

    Not the decoded image: a glance at layout and progress that costs a gather, not a visual-tokenizer decode.
    """
    vectors = unit_codebook[tokens.to(unit_codebook.device)].float()
    dims = vectors.shape[-1]
    rgb = vectors[..., :3] if dims >= 3 else vectors[..., :1].expand(*vectors.shape[:-1], 3)
    rgb = (rgb * 0.5 + 0.5).clamp(0, 1)
    return rgb.repeat_interleave(scale, 0).repeat_interleave(scale, 1).cpu()


GENERATED, HELD, NOISED = (0.12, 0.12, 0.14), (0.2, 0.85, 0.3), (1.0, 0.75, 0.1)


def start_colors(start: torch.Tensor, hold: bool = True) -> torch.Tensor:
    """Start times [...] -> RGB [..., 3]: near black = generated from noise; green = held exactly; amber, brighter
    for a later start time = a given token noised to t0 that keeps refining (the diagrams' one colour code)."""
    start = start.float()
    amber = torch.tensor(NOISED) * (0.35 + 0.65 * start).unsqueeze(-1)
    rgb = torch.where((start >= 1).unsqueeze(-1) & hold, torch.tensor(HELD), amber)
    return torch.where((start <= 0).unsqueeze(-1), torch.tensor(GENERATED), rgb)


def schedule_diagram(schedule: FrameSchedule, cell: int = 24, height: int = 48) -> torch.Tensor:
    """IMAGE [1, height, T*cell, 3]: one column per latent frame in the colours of `start_colors`; the dark top part
    of a column shows how much noise is left."""
    columns = []
    for t0 in schedule.start:
        column = start_colors(torch.tensor(t0), schedule.hold).expand(height, cell, 3).clone()
        filled = int(round(height * (1 - t0)))
        column[:filled] *= 0.35
        column[:, -1] = 0.0  # separator
        columns.append(column)
    return torch.cat(columns, dim=1).unsqueeze(0)


def start_map_diagram(starts: StartTimes, width: int = 1024) -> torch.Tensor:
    """IMAGE [1, h*cell, T*(w*cell+1), 3]: every latent frame's token map side by side in the colours of
    `start_colors` (a repaint mask as the sampler sees it), scaled to about `width` pixels."""
    frames, h, w = starts.latent_shape
    cell = max(1, min(8, width // (frames * w)))
    tiles = []
    for frame in starts.start:
        tile = start_colors(frame, starts.hold).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        tiles += [tile, torch.zeros(h * cell, 1, 3)]  # separator
    return torch.cat(tiles[:-1], dim=1).unsqueeze(0)
