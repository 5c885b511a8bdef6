"""Prompt tokenization for URSA: Qwen3 tokenizer, left padding to the prompt length, motion prefix
(docs/ARCHITECTURE.md, "Prompt encoding")."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import rules
from ..errors import CheckpointError, InputError
from ..model.config import TransformerConfig

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"


def with_motion(prompt: str, motion: Optional[float]) -> str:
    """The video prompt form `motion=<score>, <text>`; unchanged when no motion score is given."""
    if motion is None:
        return prompt
    return f"motion={float(motion):.1f}, {prompt}"


class PromptEncoder:
    """Turns prompts into the [B, L] left-padded id tensors the transformer reads."""

    def __init__(self, tokenizer_dir: Path, config: TransformerConfig):
        from transformers import AutoTokenizer

        tokenizer_dir = Path(tokenizer_dir)
        if not tokenizer_dir.is_dir():
            raise CheckpointError(f"missing tokenizer folder: {tokenizer_dir}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except Exception as exc:  # transformers raises OSError/ValueError/... for broken folders
            raise CheckpointError(f"{tokenizer_dir}: cannot load the tokenizer ({exc})") from exc
        lm_vocab_size = config.lm_vocab_size
        if len(self.tokenizer) > lm_vocab_size:
            raise CheckpointError(f"{tokenizer_dir}: tokenizer has {len(self.tokenizer)} tokens but the transformer's "
                                  f"lm_vocab_size is {lm_vocab_size}; text ids would collide with visual ids")
        if len(self.tokenizer) != lm_vocab_size:
            log.warning("tokenizer length %d != lm_vocab_size %d", len(self.tokenizer), lm_vocab_size)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = PAD_TOKEN
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "right"  # keep the first max_length tokens
        self.config = config

    @property
    def max_length(self) -> int:
        """The prompt length limit: the checkpoint's max_prompt_length (its one home is TransformerConfig)."""
        return self.config.max_prompt_length

    def warn_if_cut(self, texts: Sequence[str]) -> None:
        """A prompt longer than max_length is cut by the tokenizer: say so instead of cutting silently."""
        lengths = [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        message = rules.prompt_too_long(max(lengths), self.max_length)
        if message:
            log.warning(message)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, prompts: Sequence[str], motion: Optional[float] = None) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise InputError(f"prompts must be strings, got {type(bad[0]).__name__}")
        texts = [with_motion(p, motion) for p in prompts]
        self.warn_if_cut(texts)
        batch = self.tokenizer(texts, max_length=self.max_length, padding="max_length", truncation=True,
                               add_special_tokens=False, return_tensors="pt")
        return batch["input_ids"].long()
