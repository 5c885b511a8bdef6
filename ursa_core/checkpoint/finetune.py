"""Fine-tuned transformer weights over a base checkpoint (`--transformer-weights`, the loader's transformer_weights).

A fine-tune changes the transformer and nothing else: the folder still gives the configs, the prompt tokenizer, the
metric path and the visual tokenizer. UDM-GRPO publishes its RL-tuned IBQ512 transformers this way (a
`diffusion_pytorch_model.bin` loaded into the base pipeline's transformer with `load_state_dict`); upstream's trainer
saves whole transformers the same way. Every key must be one of the base's, with the base's shape; keys the file
lacks keep the base's values.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from ..errors import InputError
from ..files.tensor_files import read_tensors, tensor_shapes

log = logging.getLogger(__name__)

# Prefixes training wrappers add to every key: DDP / accelerate (module.), torch.compile (_orig_mod.), a
# pipeline-level state dict (transformer.). Stripped only when every key has it.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "transformer.")
CODEBOOK_KEY = "lm_head.weight"   # [K, hidden]: one row per code of the visual tokenizer it was trained for


def strip_wrappers(state: Mapping[str, object]) -> dict[str, object]:
    state = dict(state)
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                stripped = True
    return state


def check_against(shapes: Mapping[str, tuple], expected: Mapping[str, tuple], where: str) -> None:
    """One line for the first thing that does not fit the base: another visual tokenizer (the codebook), a key the
    transformer does not have, another shape (another model size)."""
    if CODEBOOK_KEY in shapes and CODEBOOK_KEY in expected and shapes[CODEBOOK_KEY][0] != expected[CODEBOOK_KEY][0]:
        raise InputError(f"{where}: made for a visual tokenizer of {shapes[CODEBOOK_KEY][0]} codes, but this "
                         f"checkpoint's has {expected[CODEBOOK_KEY][0]} ('{CODEBOOK_KEY}' "
                         f"{tuple(shapes[CODEBOOK_KEY])}): load it over a checkpoint of its tokenizer family")
    unknown = [key for key in shapes if key not in expected]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise InputError(f"{where}: key '{unknown[0]}'{more} is not a weight of this transformer")
    for key, shape in shapes.items():
        if tuple(shape) != tuple(expected[key]):
            raise InputError(f"{where}: key '{key}' has shape {tuple(shape)} but this checkpoint's is "
                             f"{tuple(expected[key])}: the weights are for another model size")


def check_transformer_weights(path: str | Path, expected: Mapping[str, tuple],
                              what: str = "--transformer-weights") -> None:
    """The checks of `read_transformer_weights` from the names and shapes alone (before a run, no memory)."""
    check_against(strip_wrappers(tensor_shapes(path, what)), expected, f"{what} {path}")


def read_transformer_weights(path: str | Path, expected: Mapping[str, tuple],
                             what: str = "--transformer-weights") -> dict[str, torch.Tensor]:
    """The fine-tuned tensors of `path`, checked against the base's keys and shapes before any weight moves."""
    state = strip_wrappers(read_tensors(path, what))
    check_against({key: tuple(t.shape) for key, t in state.items()}, expected, f"{what} {path}")
    kept = len(expected) - len(state)
    log.info("transformer weights %s: %d tensors replace the base's%s", path, len(state),
             f", {kept} keep the base's values" if kept else "")
    return state
