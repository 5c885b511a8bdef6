"""Saving sampled tokens so a failed or changed decode never costs the sampling (safetensors + metadata)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

FORMAT = "ursa-tokens-v1"


def save_tokens(tokens: torch.Tensor, path: str | Path, **metadata: Any) -> Path:
    """Write tokens [B, T, h, w] (int) with string metadata (fps, model, prompt...)."""
    from safetensors.torch import save_file

    tokens = torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.ndim != 4:
        raise InputError(f"tokens must be an integer tensor [B, T, h, w], got {tokens.dtype} {list(tokens.shape)}")
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    tmp = path.with_name(path.name + ".partial")
    save_file({"tokens": tokens.to(torch.int32).contiguous().cpu()}, str(tmp), metadata=meta)
    tmp.replace(path)  # never leave a half-written file under the final name
    return path


def load_tokens(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read tokens written by save_tokens: (int64 [B, T, h, w], metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"token file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT or "tokens" not in handle.keys():
                raise InputError(f"{path} is not an URSA token file (format {meta.get('format')!r})")
            tokens = handle.get_tensor("tokens").long()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read tokens ({exc})") from exc
    return tokens, {k: json.loads(v) for k, v in meta.items() if k != "format"}


@dataclass
class TokenClip:
    """Sampled visual tokens travelling between nodes: ids [B, T, h, w] (CPU int64) and the clip's frame rate."""
    tokens: torch.Tensor
    fps: float = 12.0

    @property
    def latent_frames(self) -> int:
        return self.tokens.shape[1]
