"""The transformer's input: `[prompt ids (L), BOV, visual ids + lm_vocab_size]` and its rotary tables.

Position L + j predicts visual token j (BOV predicts token 0): the reference's next-token shift, kept although
attention is bidirectional (docs/ARCHITECTURE.md, "The transformer").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .config import TransformerConfig


@dataclass(frozen=True)
class ModelInput:
    """What the transformer reads: ids [B, L + 1 + T*h*w] and the rotary cos/sin of every position."""
    input_ids: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def sequence_ids(config: TransformerConfig, text_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[B, L] prompt ids + [B, T, h, w] visual codes -> [B, L + 1 + T*h*w] ids on text_ids' device."""
    if text_ids.ndim != 2 or text_ids.shape[1] != config.max_prompt_length:
        raise InputError(f"prompt ids must be [B, {config.max_prompt_length}] (the checkpoint's max_prompt_length),"
                         f" got {list(text_ids.shape)}")
    visual = tokens.flatten(1).to(text_ids.device) + config.lm_vocab_size
    bov = torch.full((text_ids.shape[0], 1), config.bov_token_id, dtype=torch.long, device=text_ids.device)
    return torch.cat([text_ids, bov, visual], dim=1)


def predicting_positions(config: TransformerConfig, token_index: torch.Tensor) -> torch.Tensor:
    """The sequence positions whose outputs predict the visual tokens `token_index` (flat T*h*w indices)."""
    return token_index + config.max_prompt_length


def build_sequence(model, text_ids: torch.Tensor, tokens: torch.Tensor) -> ModelInput:
    """The model input for prompt ids [B, L] (from `model.prompts.encode`) and visual tokens [B, T, h, w], on
    the model's device: exactly what the sampler feeds the transformer at every step."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 4:
        raise InputError(f"visual tokens must be [B, T, h, w], got {list(tokens.shape)}")
    ids = sequence_ids(model.config, text_ids.to(model.device), tokens)
    return ModelInput(ids, *model.transformer.rotary_tables(tuple(tokens.shape[1:])))
