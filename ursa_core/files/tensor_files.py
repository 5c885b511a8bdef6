"""Tensor files a user brings (fine-tuned transformer weights, LoRA adapters): read as tensors and nothing else.

safetensors first. `.bin` / `.pt` / `.pth` (what PEFT's `save_pretrained(safe_serialization=False)` and plain
`torch.save` write) only through `torch.load(weights_only=True)`, which refuses any pickle that would import or run
code. A refused file is left as it was, and loading it unsafely is never suggested: `ursa convert` turns a
tensors-only pickle into safetensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection

import torch

from ..errors import InputError
from .atomic import atomic_file, check_writable

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
TENSOR_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
# Wrappers training scripts put around a state dict ({"state_dict": {...}}); one level is unwrapped.
WRAPPER_KEYS = ("state_dict", "module", "model")


def check_tensor_file(path: str | Path, what: str) -> Path:
    """An existing file whose name says safetensors or a tensors-only pickle; one line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    if path.suffix.lower() not in TENSOR_SUFFIXES:
        raise InputError(f"{what} {path}: {path.suffix or 'no extension'} is not a tensor file: use .safetensors, "
                         f"or a tensors-only pickle ({', '.join(PICKLE_SUFFIXES)})")
    return path


def _read_pickle(path: Path, what: str, mmap: bool = False) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # UnpicklingError for code, RuntimeError / EOFError for a broken or foreign file
        raise InputError(f"{what} {path}: refused: not a tensors-only file ({_refusal_reason(exc)[:160]}); only "
                         f"plain tensors are read from pickles (torch.load weights_only=True)") from None


# torch's weights_only refusal wraps its reason in advice, one of which is to load the file unsafely: never passed on.
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1)", "(2)")
_REASON_MARK = "WeightsUnpickler error:"


def _refusal_reason(exc: Exception) -> str:
    """What torch's refusal says the file holds (the global it would import, the opcode it could not read), without
    the advice around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    marked = [line.split(_REASON_MARK, 1)[1].split(" Please use")[0].strip() for line in lines if _REASON_MARK in line]
    reasons = [line for line in marked if line] + [line for line in lines if not line.startswith(_TORCH_ADVICE)
                                                   and _REASON_MARK not in line]
    return reasons[0] if reasons else type(exc).__name__


def read_safetensors(path: str | Path, what: str = "", error: type[Exception] = InputError,
                     skip: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """name -> tensor of a safetensors file on the CPU, less the names in `skip` (never read: the caller has them
    from elsewhere); a broken or foreign file is one `error` naming it (`what` names the input, a flag or a node
    input; a checkpoint's own files raise CheckpointError)."""
    return _in_safetensors(path, what, error,
                           lambda handle: {name: handle.get_tensor(name) for name in handle.keys() if name not in skip})


def _in_safetensors(path: str | Path, what: str, error: type[Exception], read: Callable) -> object:
    """`read(handle)` of the file opened with safe_open, its failures one line."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return read(handle)
    except Exception as exc:  # safetensors raises several types for a broken header or a foreign file
        where = f"{what} {path}" if what else str(path)
        raise error(f"{where}: not a readable safetensors file ({exc})") from None


def read_tensors(path: str | Path, what: str = "file", mmap: bool = False) -> dict[str, torch.Tensor]:
    """name -> tensor of a safetensors file or a tensors-only pickle (one `state_dict`-style wrapper unwrapped);
    anything else is one line naming the file. `what` names the input in messages (a flag, a node input). `mmap`
    maps a pickle's tensors instead of reading them (a check of names and shapes costs no memory)."""
    path = check_tensor_file(path, what)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        data = read_safetensors(path, what)
    else:
        data = _read_mapped(path, what) if mmap else _read_pickle(path, what)
    if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in WRAPPER_KEYS \
            and isinstance(next(iter(data.values())), dict):
        data = next(iter(data.values()))
    if not isinstance(data, dict) or not data:
        raise InputError(f"{what} {path}: holds {type(data).__name__ if data else 'nothing'}, not a dict of named "
                         f"tensors")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"{what} {path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return data


def _read_mapped(path: Path, what: str) -> object:
    """A pickle mapped, not read; an old-format (non-zip) pickle cannot be mapped and is read."""
    import zipfile
    return _read_pickle(path, what, mmap=zipfile.is_zipfile(path))


def tensor_shapes(path: str | Path, what: str = "file") -> dict[str, tuple[int, ...]]:
    """name -> shape of a tensor file, read without loading the tensors (safetensors: the header only)."""
    path = check_tensor_file(path, what)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        return {name: tuple(t.shape) for name, t in read_tensors(path, what, mmap=True).items()}
    return _in_safetensors(path, what, InputError,
                           lambda handle: {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no storage shared between two names (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        pointer = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def convert_to_safetensors(source: str | Path, target: str | Path | None = None) -> Path:
    """`ursa convert`: the tensors of `source` written to `target` (default: beside it, `.safetensors`), atomically:
    the target appears complete or not at all. The source is only read."""
    from safetensors.torch import save_file

    source = Path(source)
    target = Path(target) if target is not None else source.with_suffix(SAFETENSORS_SUFFIX)
    if target.suffix.lower() != SAFETENSORS_SUFFIX:
        raise InputError(f"--out {target}: the converted file is safetensors; name it *.safetensors")
    if target.resolve() == source.resolve():
        raise InputError(f"--out {target}: is the file being converted; give another name")
    tensors = read_tensors(source, "convert")
    check_writable(target, "--out")
    with atomic_file(target) as tmp:
        save_file(_unshared(tensors), str(tmp), metadata={"format": "pt"})
    return target
