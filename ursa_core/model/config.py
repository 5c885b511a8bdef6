"""Configuration of an URSA checkpoint, read from the official folder's json files.

Only the keys the reference's init signatures name are taken from `transformer/config.json`; everything else takes
the values the reference ends up with through transformers' Qwen3Config defaults (head_dim 128, rms eps 1e-6),
whatever the file says (docs/ARCHITECTURE.md, "Checkpoint layout").
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import CheckpointError
from ..files.safetensors_io import read_json

DEFAULT_PROMPT_LENGTH = 320
TYPE_NAMES = {int: "an integer", float: "a number"}


def check_types(raw: dict, expected: dict, path: Path | str) -> None:
    """One line naming the file, key, value and expected type for the first key of the wrong type."""
    for key, kind in expected.items():
        value = raw.get(key)
        if value is None:
            continue
        ok = isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
        if not ok:
            raise CheckpointError(f"{path}: '{key}' must be {TYPE_NAMES.get(kind, kind.__name__)}, "
                                  f"found {value!r}")


@dataclass(frozen=True)
class TransformerConfig:
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    num_hidden_layers: int = 28
    rope_theta: float = 1_000_000.0
    vocab_size: int = 215_669
    lm_vocab_size: int = 151_669
    lm_head_size: int = 64_000
    bov_token_id: int = 151_652
    # Not read from config.json: the reference always gets Qwen3Config's defaults for these.
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    # Prompt length the text is left-padded/truncated to (pipeline `max_prompt_length`).
    max_prompt_length: int = DEFAULT_PROMPT_LENGTH

    READ_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                 "num_hidden_layers", "rope_theta", "vocab_size", "lm_vocab_size", "lm_head_size",
                 "bov_token_id", "max_prompt_length")

    @classmethod
    def from_json(cls, path: Path) -> "TransformerConfig":
        raw = read_json(path)
        check_types(raw, {f.name: type(f.default) for f in fields(cls) if f.name in cls.READ_KEYS}, path)
        values = {}
        for key in cls.READ_KEYS:
            if key in raw and raw[key] is not None:
                values[key] = raw[key]
        for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                    "num_hidden_layers", "vocab_size", "lm_vocab_size", "lm_head_size", "bov_token_id",
                    "max_prompt_length"):
            if key in values and values[key] <= 0:
                raise CheckpointError(f"{path}: '{key}' must be a positive integer, found {values[key]!r}")
        config = cls(**values)
        config.check(path)
        return config

    def check(self, where: Path | str) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(f"{where}: num_attention_heads {self.num_attention_heads} is not a multiple of "
                                  f"num_key_value_heads {self.num_key_value_heads}")
        if self.vocab_size < self.lm_vocab_size + self.lm_head_size:
            raise CheckpointError(f"{where}: vocab_size {self.vocab_size} < lm_vocab_size {self.lm_vocab_size} + "
                                  f"lm_head_size {self.lm_head_size}")
        if not 0 <= self.bov_token_id < self.lm_vocab_size:
            raise CheckpointError(f"{where}: bov_token_id {self.bov_token_id} is outside the text vocabulary "
                                  f"[0, {self.lm_vocab_size})")

    def to_json_dict(self) -> dict:
        """The keys the official config.json carries (head_dim / eps are deliberately absent)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in self.READ_KEYS}
        out.pop("max_prompt_length")
        return out


@dataclass(frozen=True)
class SchedulerConfig:
    """`scheduler/scheduler_config.json`: the metric path and time-shift constants."""
    alpha: float = 0.9
    c: float = 3.0
    shift: float = 1.0
    eps: float = 1e-5

    @classmethod
    def from_json(cls, path: Path) -> "SchedulerConfig":
        raw = read_json(path)
        values = {}
        for key in ("alpha", "c", "shift", "eps"):
            value = raw.get(key)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise CheckpointError(f"{path}: '{key}' must be a number, found {value!r}")
            values[key] = float(value)
        if raw.get("alpha") is None or raw.get("c") is None:
            # Without alpha/c the reference silently falls back to the mixture path; we only implement the metric
            # path the released models use, so say so instead of sampling something else.
            raise CheckpointError(f"{path}: 'alpha' and 'c' are required (the metric probability path); "
                                  f"found alpha={raw.get('alpha')!r}, c={raw.get('c')!r}")
        config = cls(**values)
        if config.alpha <= 0 or config.c <= 0 or config.shift <= 0:
            raise CheckpointError(f"{path}: alpha, c and shift must be > 0, found {config}")
        return config
