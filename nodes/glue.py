"""The ComfyUI side of the plugin in one place: model folders, memory management, progress and previews."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ursa_core.checkpoint.loader import URSAModel, is_ursa_folder, load_model, resolve_dtype
from ursa_core.errors import InputError
from ursa_core.files.token_io import model_identity
from ursa_core.runtime.loader_options import placement_device
from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed
from ursa_core.sampling.preview import token_colors

log = logging.getLogger(__name__)
MODEL_FOLDER_KEY = "ursa"
SEARCH_DEPTH = 2  # models/ursa/<name> or models/ursa/<org>/<name>
DOWNLOAD_HINT = ("download one: hf download BAAI/URSA-1.7B-FSQ320 --local-dir ComfyUI/models/ursa/URSA-1.7B-FSQ320 "
                 "(or: python -m ursa_core download BAAI/URSA-1.7B-FSQ320 --dir ComfyUI/models/ursa)")


def model_search_dirs() -> list[str]:
    """models/ursa/, the `ursa` paths of extra_model_paths.yaml, then core's models/diffusers/.

    `ursa` is deliberately not registered as a folder_paths key: ComfyUI's model library lists every weight file of
    a registered folder (each shard of each checkpoint), while URSA checkpoints are folders. A user who adds `ursa:`
    to extra_model_paths.yaml registers it (and gets those entries); its paths are searched too."""
    dirs = [os.path.join(folder_paths.models_dir, MODEL_FOLDER_KEY)]
    for key in (MODEL_FOLDER_KEY, "diffusers"):
        if key in folder_paths.folder_names_and_paths:
            dirs += [d for d in folder_paths.get_folder_paths(key) if d not in dirs]
    return dirs


def list_model_folders() -> list[str]:
    """URSA checkpoint folders (other diffusers folders are left out), relative to their search dir, with '/'."""
    found: set[str] = set()
    for base in map(Path, model_search_dirs()):
        if not base.is_dir():
            continue
        for depth in range(1, SEARCH_DEPTH + 1):
            for index in base.glob("/".join(["*"] * depth) + "/model_index.json"):
                if is_ursa_folder(index.parent):
                    found.add(index.parent.relative_to(base).as_posix())
    return sorted(found)


def missing_model_message(name: str) -> str:
    available = list_model_folders()
    if not available:
        return f"model folder {name!r}: no URSA checkpoint folder in {model_search_dirs()}; {DOWNLOAD_HINT}"
    return f"model folder {name!r} not found in {model_search_dirs()}; available: {available}"


def model_folder_path(name: str) -> Path:
    for base in map(Path, model_search_dirs()):
        candidate = base / name
        if is_ursa_folder(candidate):
            return candidate
    raise InputError(missing_model_message(name))


def load_fully(patchers: list, memory_required: int = 0) -> None:
    """Move patchers' modules onto their load devices, whole (other models are unloaded to make room, per device, as
    for core's text encoders). A partial load by ComfyUI would leave our plain torch layers (they lack comfy.ops'
    weight casting) on the offload device and fail in the forward pass; URSA's partial loading is its own block
    swap, already sized to the free memory when the handle was made."""
    mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)


@dataclass
class LoadedURSA:
    """What URSA_MODEL carries: a handle of the model (the loader's speed options applied) and the ModelPatcher
    ComfyUI moves between devices; the model as loaded and the options, to make handles on other devices; and,
    after URSA Devices, the handles on its other devices and how work is shared between them."""
    model: URSAModel
    patcher: object
    loaded: Optional[URSAModel] = None   # the handles share its weights (runtime/speed.with_speed)
    options: SpeedOptions = SpeedOptions()
    copies: tuple = ()                   # LoadedURSA handles on the other listed devices, in list order
    strategy: str = "auto"               # rules.DEVICE_STRATEGIES

    @property
    def handles(self) -> tuple:
        return (self, *self.copies)

    def to_compute_device(self, memory_required: int = 0) -> torch.device:
        """Every handle's weights onto its device, with `memory_required` bytes made free beside them on each
        (ComfyUI unloads other models there)."""
        load_fully([handle.patcher for handle in self.handles], memory_required)
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
        load_fully([self.patcher])
        return self.vq


def compute_device() -> torch.device:
    """The device ComfyUI runs models on (what attention backends and samplers must exist on)."""
    return torch.device(mm.get_torch_device())


def load_ursa(name: str, dtype: str, options: SpeedOptions = SpeedOptions(low_vram="auto")
              ) -> tuple[LoadedURSA, LoadedVQ]:
    """Load on the offload device, then a handle with the speed options (ursa_core.runtime.speed); ComfyUI's model
    management moves weights to the GPU when a node runs (with block swap, only the resident part: streamed layers
    stay in host memory)."""
    folder = model_folder_path(name)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    loaded = load_model(folder, device=offload_device, dtype=resolve_dtype(dtype, torch.device(load_device)))
    if loaded.visual_tokenizer is None:
        raise InputError(f"{folder}: no vae/ folder; URSA needs its visual tokenizer to encode and decode")
    handle = handle_on(loaded, options, load_device)
    vq_device = placement_device(options.vq_device, mm.vae_device())
    vq_patcher = comfy.model_patcher.ModelPatcher(loaded.visual_tokenizer, load_device=vq_device,
                                                  offload_device=mm.vae_offload_device())
    return handle, LoadedVQ(loaded.visual_tokenizer, vq_patcher, loaded.geometry.fps, model_identity(loaded))


def handle_on(loaded: URSAModel, options: SpeedOptions, device) -> LoadedURSA:
    """A handle of `loaded` that computes on `device` with `options` (block swap sized to that device's free
    memory), with a ModelPatcher of its own: ComfyUI loads, frees and unloads it per device like any model."""
    offload_device = mm.unet_offload_device()
    model = with_speed(loaded, options, placement(device, offload_device))
    patcher = comfy.model_patcher.ModelPatcher(model.transformer, load_device=device, offload_device=offload_device)
    return LoadedURSA(model, patcher, loaded, options)


def on_devices(handle: LoadedURSA, devices: list[torch.device], strategy: str) -> LoadedURSA:
    """URSA Devices: a handle per listed device (the given one reused for its own device, once), the first leading;
    each is a weight copy of its own once ComfyUI loads it."""
    handles, reused = [], False
    for device in devices:
        if not reused and device == torch.device(handle.patcher.load_device):
            handles.append(replace(handle, copies=()))
            reused = True
        else:
            handles.append(handle_on(handle.loaded, handle.options, device))
    return replace(handles[0], copies=tuple(handles[1:]), strategy=strategy)


def placement(load_device, offload_device) -> Placement:
    """ComfyUI's devices and memory state as the speed options read them: block swap decided as core models decide
    it (--lowvram / --novram, free memory), none when ComfyUI runs on the CPU."""
    state = mm.vram_state
    free = None if state == mm.VRAMState.DISABLED else mm.get_free_memory(load_device)
    vram = {mm.VRAMState.LOW_VRAM: "low", mm.VRAMState.NO_VRAM: "none"}.get(state, "normal")
    text = torch.device(mm.text_encoder_device())
    if text == torch.device(mm.get_torch_device()):
        text = torch.device(load_device)  # core keeps the text side on its GPU: a handle on another GPU, on that one
    return Placement(torch.device(load_device), torch.device(offload_device), text, free, vram)


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
