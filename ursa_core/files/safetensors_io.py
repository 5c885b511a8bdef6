"""Reading diffusers-style component folders: a single safetensors file or a sharded one with its index json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Collection, Mapping

import torch

from ..errors import CheckpointError
from .tensor_files import read_safetensors

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"


def read_json(path: Path) -> dict:
    """Read a json file; a missing or malformed file is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file: {path} (folder {path.parent})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid json ({exc})") from exc


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a component folder, single file or shards listed by the index json."""
    folder = Path(folder)
    single = folder / WEIGHTS_NAME
    index = folder / INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no 'weight_map'")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) that are missing from {folder}: {missing}")
        return [folder / s for s in shards]
    others = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    if len(others) == 1:
        return [folder / others[0]]
    raise CheckpointError(
        f"no weights in {folder}: expected {WEIGHTS_NAME} or {INDEX_NAME}"
        + (f" (found {others})" if others else ""))


def load_state_dict(folder: Path, skip: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Every tensor of a component folder in one dict on the CPU, less the names in `skip` (never read: a fine-tune
    replaces them)."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        state.update(read_safetensors(file, error=CheckpointError, skip=skip))
    return state


def check_state_dict(expected: Mapping[str, torch.Size | tuple], found: Mapping[str, torch.Tensor],
                     folder: Path, allow_extra: bool = False) -> None:
    """Raise a CheckpointError naming the first missing/misshapen key (and counting the rest)."""
    missing = [k for k in expected if k not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{folder}: weights are missing key '{missing[0]}'{more}, "
                              f"expected shape {tuple(expected[missing[0]])}")
    for key, shape in expected.items():
        if tuple(found[key].shape) != tuple(shape):
            raise CheckpointError(f"{folder}: key '{key}' has shape {tuple(found[key].shape)}, "
                                  f"expected {tuple(shape)}")
    if not allow_extra:
        extra = sorted(set(found) - set(expected))
        if extra:
            raise CheckpointError(f"{folder}: unexpected key '{extra[0]}'"
                                  + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                                  + " - is this the right model folder?")


def save_state_dict(state: Mapping[str, torch.Tensor], folder: Path, max_shard_bytes: int | None = None) -> None:
    """Write a component's weights in the diffusers layout (sharded with an index json when max_shard_bytes is set,
    through huggingface_hub's own writer of that layout)."""
    from huggingface_hub import save_torch_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    # A limit above the total size writes the single unsharded file.
    limit = max_shard_bytes or sum(v.numel() * v.element_size() for v in tensors.values()) + 1
    pattern = WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")  # -00001-of-00002 before the extension
    save_torch_state_dict(tensors, folder, filename_pattern=pattern, max_shard_size=limit)
