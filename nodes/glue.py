"""The ComfyUI side of the plugin in one place: model folders, memory management, progress and previews."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ursa_core.errors import InputError
from ursa_core.checkpoint import URSAModel, load_model, resolve_dtype
from ursa_core.preview import token_colors
from ursa_core.token_io import model_identity

MODEL_FOLDER_KEY = "ursa"
SEARCH_DEPTH = 2  # models/ursa/<name> or models/ursa/<org>/<name>


def register_model_folder() -> None:
    """`models/ursa/` as its own key (plus anything users add in extra_model_paths.yaml)."""
    if MODEL_FOLDER_KEY not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(MODEL_FOLDER_KEY, os.path.join(folder_paths.models_dir, "ursa"))


def model_search_dirs() -> list[str]:
    register_model_folder()
    dirs = list(folder_paths.get_folder_paths(MODEL_FOLDER_KEY))
    if "diffusers" in folder_paths.folder_names_and_paths:
        dirs += folder_paths.get_folder_paths("diffusers")
    return dirs


def list_model_folders() -> list[str]:
    """Folders holding a model_index.json, as paths relative to their search dir (always with '/')."""
    found: set[str] = set()
    for base in map(Path, model_search_dirs()):
        if not base.is_dir():
            continue
        for depth in range(1, SEARCH_DEPTH + 1):
            for index in base.glob("/".join(["*"] * depth) + "/model_index.json"):
                found.add(index.parent.relative_to(base).as_posix())
    return sorted(found)


def model_folder_path(name: str) -> Path:
    for base in map(Path, model_search_dirs()):
        candidate = base / name
        if (candidate / "model_index.json").is_file():
            return candidate
    raise InputError(f"URSA model folder {name!r} not found in {model_search_dirs()}; put a checkpoint folder "
                     f"(with model_index.json) there, e.g. models/ursa/URSA-1.7B-FSQ320")


@dataclass
class LoadedURSA:
    """What URSA_MODEL carries: the model and the ModelPatcher ComfyUI moves between devices."""
    model: URSAModel
    patcher: object

    def to_compute_device(self, memory_required: int = 0) -> torch.device:
        """Weights onto the GPU, with `memory_required` bytes made free beside them (ComfyUI unloads other models)."""
        mm.load_models_gpu([self.patcher], memory_required=memory_required)
        return self.model.device


@dataclass
class LoadedVQ:
    """What URSA_VQ carries: the visual tokenizer, its patcher, the model's frame rate and the tokenizer's identity
    (checked against the identity of the tokens it decodes)."""
    vq: torch.nn.Module
    patcher: object
    fps: float
    identity: Optional[dict] = None

    def to_compute_device(self) -> torch.nn.Module:
        mm.load_models_gpu([self.patcher])
        return self.vq


def compute_device() -> torch.device:
    """The device ComfyUI runs models on (what attention backends and samplers must exist on)."""
    return torch.device(mm.get_torch_device())


def load_ursa(name: str, dtype: str) -> tuple[LoadedURSA, LoadedVQ]:
    """Load on the offload device; ComfyUI's model management moves weights to the GPU when a node runs."""
    folder = model_folder_path(name)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    model = load_model(folder, device=offload_device, dtype=resolve_dtype(dtype, torch.device(load_device)))
    if model.visual_tokenizer is None:
        raise InputError(f"{folder}: no vae/ folder; URSA needs its visual tokenizer to encode and decode")
    patcher = comfy.model_patcher.ModelPatcher(model.transformer, load_device=load_device,
                                               offload_device=offload_device)
    vq_patcher = comfy.model_patcher.ModelPatcher(model.visual_tokenizer, load_device=mm.vae_device(),
                                                  offload_device=mm.vae_offload_device())
    return LoadedURSA(model, patcher), LoadedVQ(model.visual_tokenizer, vq_patcher, model.geometry.fps, model_identity(model))


class StepProgress:
    """ComfyUI progress (and the cancel point: every update raises if the user pressed cancel)."""

    def __init__(self, total: int, codebook: Optional[torch.Tensor] = None, node_id: Optional[str] = None):
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.total = total
        self.codebook = codebook
        self.done = 0

    def advance(self, preview_tokens: Optional[torch.Tensor] = None) -> None:
        self.done += 1
        self.bar.update_absolute(self.done, self.total, self._preview(preview_tokens))

    def _preview(self, tokens: Optional[torch.Tensor]):
        if tokens is None or self.codebook is None:
            return None
        from PIL import Image

        rgb = token_colors(self.codebook, tokens[0, 0])
        return ("JPEG", Image.fromarray((rgb.numpy() * 255).astype("uint8")), 512)


def check_interrupt() -> None:
    mm.throw_exception_if_processing_interrupted()
