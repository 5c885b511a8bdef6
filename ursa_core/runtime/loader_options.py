"""The loader's memory and placement options: their allowed values, their one-line rules, and the automatic choice
of how many decoder layers stay on the GPU (block swap) from the free memory a model manager reports."""
from __future__ import annotations

import torch

from .. import rules
from ..rules import LOW_VRAM_MODES, MAX_BLOCKS  # noqa: F401 - the loader node's widgets read them from here too
from .lowvram import SLOTS
# Room left for activations when choosing how many layers fit: a 49-frame 320x512 step peaks about 2.2 GiB above
# the bf16 weights on an H100 (docs/PERFORMANCE.md), rounded up.
ACTIVATION_RESERVE = 3 << 30


def device_choices() -> list[str]:
    """Where the visual tokenizer or the text side may run: ComfyUI's choice, the CPU, or any visible GPU."""
    return rules.placement_choices()


def placement_device(option: str, default) -> torch.device:
    """The device a vq_device / text_device option names; "default" is the front end's choice `default`."""
    return torch.device(default) if option == "default" else torch.device(option)


def blocks_to_keep(mode: str, blocks_on_gpu: int, layer_bytes: list[int], other_bytes: int, free_bytes: int,
                   low_vram_state: bool, no_vram_state: bool) -> int | None:
    """How many leading decoder layers stay on the GPU; None = no streaming (every layer resident).

    off: never stream. stream: keep `blocks_on_gpu`. auto (like core models under --lowvram/--novram or when VRAM
    is short): no streaming while everything plus the activation reserve fits in `free_bytes`; otherwise keep as
    many layers as fit next to the always-resident part (`other_bytes`: embeddings, norm, head) and the two stream
    slots, none under --novram."""
    if mode == "off":
        return None
    if mode == "stream":
        return min(blocks_on_gpu, len(layer_bytes))
    total = other_bytes + sum(layer_bytes)
    if not (low_vram_state or no_vram_state) and total + ACTIVATION_RESERVE <= free_bytes:
        return None
    if no_vram_state:
        return 0
    slots = SLOTS * max(layer_bytes, default=0)
    room = free_bytes - other_bytes - slots - ACTIVATION_RESERVE
    keep = 0
    for size in layer_bytes:
        if room < size:
            break
        room -= size
        keep += 1
    return keep
