"""Saving sampled tokens so a failed or changed decode never costs the sampling (safetensors + metadata).

A token file carries the identity of the visual tokenizer that made it (kind, codebook size, strides, a short hash
of its config, the model's name), so decoding it with another tokenizer is an error naming both instead of noise.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import InputError
from .atomic import atomic_file

log = logging.getLogger(__name__)

FORMAT = "ursa-tokens-v2"
OLD_FORMATS = ("ursa-tokens-v1",)  # no tokenizer identity: loaded with a warning
# What must agree for tokens to mean the same pixels ("model" is only the name shown in messages).
IDENTITY_KEYS = ("kind", "codebook_size", "temporal_stride", "spatial_stride", "config_hash")


def tokenizer_identity(vq, model_name: str = "") -> dict[str, Any]:
    """The identity of a loaded visual tokenizer, as stored in token files and carried by TokenClip."""
    config = json.dumps(getattr(vq, "config", {}), sort_keys=True, default=str)
    return {"kind": vq.kind, "codebook_size": int(vq.codebook_size), "temporal_stride": int(vq.temporal_stride),
            "spatial_stride": int(vq.spatial_stride),
            "config_hash": hashlib.sha256(config.encode("utf-8")).hexdigest()[:12], "model": model_name}


def model_identity(model) -> Optional[dict[str, Any]]:
    """The identity of an URSAModel's visual tokenizer (None for a checkpoint without vae/)."""
    return None if model.visual_tokenizer is None else tokenizer_identity(model.visual_tokenizer, Path(model.folder).name)


def describe_identity(identity: dict[str, Any]) -> str:
    return (f"{identity.get('model') or 'an unnamed model'} ({identity.get('kind')} tokenizer, "
            f"{identity.get('codebook_size')} codes, strides {identity.get('temporal_stride')}x"
            f"{identity.get('spatial_stride')}, config {identity.get('config_hash')})")


def check_identity(found: Optional[dict], expected: Optional[dict], what: str = "these tokens") -> None:
    """InputError naming both tokenizers when `found` (tokens' identity) does not match `expected` (the model's).

    Tokens without an identity (files saved before FORMAT, hand-made clips) cannot be checked; load_tokens warns.
    """
    if not found or not expected:
        return
    differing = [key for key in IDENTITY_KEYS if found.get(key) != expected.get(key)]
    if differing:
        raise InputError(f"{what} were made by {describe_identity(found)} but this model is "
                         f"{describe_identity(expected)} ({', '.join(differing)} differ); use the model that made "
                         f"them")


def token_file_path(path: str | Path) -> Path:
    """Where save_tokens writes `path`: `.safetensors` is appended when missing."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def save_tokens(tokens: torch.Tensor, path: str | Path, identity: Optional[dict] = None, **metadata: Any) -> Path:
    """Write tokens [B, T, h, w] (int) with the tokenizer identity and string metadata (fps, model, prompt...)."""
    from safetensors.torch import save_file

    tokens = torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.ndim != 4:
        raise InputError(f"tokens must be an integer tensor [B, T, h, w], got {tokens.dtype} {list(tokens.shape)}")
    path = token_file_path(path)
    meta = {"format": FORMAT, "latent_grid": json.dumps(list(tokens.shape[1:])),
            **{k: json.dumps(v) for k, v in metadata.items()}}
    if identity:
        meta["tokenizer"] = json.dumps(identity, sort_keys=True)
    with atomic_file(path) as tmp:
        save_file({"tokens": tokens.to(torch.int32).contiguous().cpu()}, str(tmp), metadata=meta)
    return path


def load_tokens(path: str | Path, shown: Optional[str] = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read tokens written by save_tokens: (int64 [B, T, h, w], metadata); metadata["tokenizer"] is the identity
    (absent in files saved before FORMAT, which load with a warning). `shown` replaces the path in messages."""
    from safetensors import safe_open

    path = Path(path)
    shown = shown or str(path)
    if not path.is_file():
        raise InputError(f"token file not found: {shown}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") not in (FORMAT, *OLD_FORMATS) or "tokens" not in handle.keys():
                raise InputError(f"{shown} is not an URSA token file (format {meta.get('format')!r})")
            tokens = handle.get_tensor("tokens").long()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{shown}: cannot read tokens ({type(exc).__name__})") from None
    if tokens.ndim != 4:
        raise InputError(f"{shown}: tokens are {list(tokens.shape)}, not [B, T, h, w]")
    if meta["format"] in OLD_FORMATS:
        log.warning("%s was saved before token files carried the tokenizer's identity (format %s); it cannot be "
                    "checked against the model that decodes it", shown, meta["format"])
    try:
        return tokens, {k: json.loads(v) for k, v in meta.items() if k != "format"}
    except ValueError as exc:  # hand-edited or foreign metadata: one line, not a JSON traceback
        raise InputError(f"{shown}: its metadata is not the JSON this pack writes ({exc})") from None


@dataclass
class TokenClip:
    """Sampled visual tokens travelling between nodes: ids [B, T, h, w] (CPU int64), the clip's frame rate, the
    identity of the tokenizer that made them (None when unknown) and, for encoded pixels, how they were fit to the
    token grid (a visual_tokenizer.canvas.PixelFit: a mask drawn on those pixels is fit the same way)."""
    tokens: torch.Tensor
    fps: float = 12.0
    identity: Optional[dict] = None
    source_fit: Optional[object] = None

    @property
    def latent_frames(self) -> int:
        return self.tokens.shape[1]
