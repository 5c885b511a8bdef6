"""The ComfyUI side of the plugin in one place: model folders, memory management, progress and previews."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ursa_core.checkpoint.defaults import CHECKPOINT_REPOS, official_name
from ursa_core.checkpoint.loader import (URSAModel, is_ursa_folder, layout_gaps, load_model, looks_like_ursa,
                                        resolve_dtype)
from ursa_core.errors import InputError
from ursa_core.files.tensor_files import TENSOR_SUFFIXES
from ursa_core.files.token_io import model_identity
from ursa_core.lora.patch import with_loras
from ursa_core.runtime.loader_options import placement_device
from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed
from ursa_core.sampling.preview import token_colors

log = logging.getLogger(__name__)
MODEL_FOLDER_KEY = "ursa"
SEARCH_DEPTH = 2  # models/ursa/<name> or models/ursa/<org>/<name>
PREVIEW_MAX_SIDE = 2048  # the sampler preview at pixel size up to here (a JPEG of flat blocks: cheap per step)
DOWNLOAD_HINT = ("download one: hf download BAAI/URSA-1.7B-FSQ320 --local-dir ComfyUI/models/ursa/URSA-1.7B-FSQ320 "
                 "(or: python -m ursa_core download BAAI/URSA-1.7B-FSQ320 --dir ComfyUI/models/ursa); the released "
                 "checkpoints: " + ", ".join(CHECKPOINT_REPOS))
WEIGHTS_FOLDER = "diffusion_models"   # core's folder for transformer / UNet weights (UNETLoader's)
NO_FILE = "none"


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


def _model_folders() -> dict[str, Path]:
    """Listed name -> folder of every URSA checkpoint folder, complete or not (a half-downloaded one is listed so
    that choosing it can say what is missing); other diffusers folders are left out. The first search dir wins."""
    found: dict[str, Path] = {}
    for base in map(Path, model_search_dirs()):
        if not base.is_dir():
            continue
        for depth in range(1, SEARCH_DEPTH + 1):
            for folder in sorted(p for p in base.glob("/".join(["*"] * depth)) if p.is_dir()):
                if looks_like_ursa(folder):
                    found.setdefault(folder.relative_to(base).as_posix(), folder)
    return found


def list_model_folders() -> list[str]:
    """The loader's model_name options: URSA checkpoint folders relative to their search dir, with '/'."""
    return sorted(_model_folders())


def completion_command(folder: Path) -> str:
    """The command that fetches what a checkpoint folder lacks (hf download keeps the files already there): the
    released repository of the official name the folder carries, else a placeholder (never a made-up repo id)."""
    match = official_name(folder)
    named = match and (match.group(1).upper(), match.group(2).upper())
    repo = next((repo for repo, kind in CHECKPOINT_REPOS.items() if kind == named),
                "<the Hugging Face repo it came from>")
    return f"hf download {repo} --local-dir {folder}"


def _find_model_folder(name: str) -> tuple[Optional[Path], Optional[str]]:
    """(the folder, None) for a complete URSA checkpoint folder, else (None, one line): not found (with the download
    command) or incomplete (what is missing and the command that completes it). The model folders are scanned once."""
    found = _model_folders()
    folder = found.get(name)
    if folder is None:
        return None, (f"model folder {name!r} not found in {model_search_dirs()}; available: "
                      f"{sorted(found) or 'none yet'}; {DOWNLOAD_HINT}")
    gaps = layout_gaps(folder)
    if not gaps and is_ursa_folder(folder):
        return folder, None
    shown = ", ".join(gaps[:4]) + (f" and {len(gaps) - 4} more" if len(gaps) > 4 else "")
    return None, (f"model folder {name!r} is incomplete (a download that stopped?): missing {shown or 'URSA configs'}; "
                  f"complete it with: {completion_command(folder)}")


def model_folder_problem(name: str) -> str | None:
    """None for a complete URSA checkpoint folder, else the one line that says why not (the loader's validator)."""
    return _find_model_folder(name)[1]


def model_folder_path(name: str) -> Path:
    folder, problem = _find_model_folder(name)
    if problem:
        raise InputError(problem)
    return folder


def list_tensor_files(folder_key: str) -> list[str]:
    """Tensor files (safetensors, tensors-only pickles) of one of ComfyUI's model folders, as its loaders list them."""
    if folder_key not in folder_paths.folder_names_and_paths:
        return []
    return [name for name in folder_paths.get_filename_list(folder_key)
            if Path(name).suffix.lower() in TENSOR_SUFFIXES]


def tensor_file_path(folder_key: str, name: str, what: str) -> Path:
    """The file `name` of a model folder; one line (never a path outside those folders) when it is not there."""
    path = folder_paths.get_full_path(folder_key, name) if name in list_tensor_files(folder_key) else None
    if path is None:
        raise InputError(f"{what} {name!r} not found in models/{folder_key}/: put the file there (available: "
                         f"{list_tensor_files(folder_key) or 'none'})")
    return Path(path)


def load_fully(patchers: list, memory_required: int = 0) -> None:
    """Move patchers' modules onto their load devices, whole (other models are unloaded to make room, per device, as
    for core's text encoders). A partial load by ComfyUI would leave our plain torch layers (they lack comfy.ops'
    weight casting) on the offload device and fail in the forward pass; URSA's partial loading is its own block
    swap, already sized to the free memory when the handle was made."""
    mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)


@dataclass
class LoadedURSA:
    """What URSA_MODEL carries: a handle of the model (the loader's speed options applied) and the ModelPatcher
    ComfyUI moves between devices; the model as loaded and the options, to make handles on other devices; after
    URSA Devices, the handles on its other devices and how work is shared between them; the LoRAs every handle
    carries (so a copy made later carries them too); and the latent shapes its compiled layers were compiled for (a
    new shape compiles again)."""
    model: URSAModel
    patcher: object
    loaded: Optional[URSAModel] = None   # the handles share its weights (runtime/speed.with_speed)
    options: SpeedOptions = SpeedOptions()
    copies: tuple = ()                   # LoadedURSA handles on the other listed devices, in list order
    loras: tuple = ()                    # (LoRAFile, strength) added by URSA LoRA Loader, on every handle
    strategy: str = "auto"               # rules.DEVICE_STRATEGIES
    compiled_shapes: set = field(default_factory=set)

    @property
    def handles(self) -> tuple:
        return (self, *self.copies)

    @property
    def compiled(self) -> bool:
        return self.options.compile

    def to_compute_device(self, memory_required: int = 0) -> torch.device:
        """Every handle's weights onto its device, with `memory_required` bytes made free beside them on each
        (ComfyUI unloads other models there)."""
        load_fully([handle.patcher for handle in self.handles], memory_required)
        return self.model.device

    def first_compiled_run(self, latent_shape: tuple) -> bool:
        """True once per shape of a compiled model: its first step compiles (~15-20 s on an H100; every device's
        handle compiles its own, at the same time)."""
        if not self.compiled or latent_shape in self.compiled_shapes:
            return False
        self.compiled_shapes.add(latent_shape)
        return True


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


def load_ursa(name: str, dtype: str, options: SpeedOptions = SpeedOptions(low_vram="auto"),
              transformer_weights: str = NO_FILE) -> tuple[LoadedURSA, LoadedVQ]:
    """Load on the offload device, then a handle with the speed options (ursa_core.runtime.speed); ComfyUI's model
    management moves weights to the GPU when a node runs (with block swap, only the resident part: streamed layers
    stay in host memory). `transformer_weights`: a file of models/diffusion_models/ loaded over the folder's
    transformer."""
    folder = model_folder_path(name)
    tuned = None if transformer_weights == NO_FILE else tensor_file_path(WEIGHTS_FOLDER, transformer_weights,
                                                                          "transformer_weights")
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    loaded = load_model(folder, device=offload_device, dtype=resolve_dtype(dtype, torch.device(load_device)),
                        transformer_weights=tuned)
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
        else:   # a new copy of the weights as loaded, with the LoRAs chained before URSA Devices
            copy = handle_on(handle.loaded, handle.options, device)
            handles.append(_add_loras(copy, handle.loras) if handle.loras else copy)
    return replace(handles[0], copies=tuple(handles[1:]), strategy=strategy)


def with_lora(handle: LoadedURSA, lora, strength: float) -> LoadedURSA:
    """`handle` with `lora` added on every device it computes on (the copies of URSA Devices too: both guidance
    branches and every sample must see the same weights), sharing the weights it had."""
    added = ((lora, strength),)
    return replace(_add_loras(handle, added), copies=tuple(_add_loras(copy, added) for copy in handle.copies))


def _add_loras(one: LoadedURSA, loras: tuple) -> LoadedURSA:
    """One handle with `loras` ((LoRAFile, strength), ...) added to its model after those it carries, and recorded
    (a copy made later for another device adds them again)."""
    return replace(one, model=with_loras(one.model, loras), loras=(*one.loras, *loras))


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


class NodeText:
    """A line of text drawn on a node: core's progress text (what GetImageSize uses to show a size), which the
    frontend keeps on the node after the run. Nothing is sent without the node's id (a node run outside a graph)."""

    def __init__(self, node_id: Optional[str], line: str):
        self.node_id, self.line = node_id, line

    def show(self, extra: Optional[str] = None) -> None:
        from server import PromptServer  # ComfyUI's server module: only inside a running ComfyUI

        if self.node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(f"{self.line} · {extra}" if extra else self.line, self.node_id)


class StepProgress:
    """ComfyUI progress (and the cancel point: every update raises if the user pressed cancel). The preview is
    drawn at the clip's pixel size (`pixel_scale` pixels per token, capped at PREVIEW_MAX_SIDE): the frontend
    labels it with the image's size, which core's upscaling to --preview-size would make wrong."""

    def __init__(self, total: int, codebook: Optional[torch.Tensor] = None, node_id: Optional[str] = None,
                 pixel_scale: int = 8):
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.total = total
        self.codebook = codebook
        self.pixel_scale = pixel_scale
        self.done = 0

    def advance(self, preview_tokens: Optional[torch.Tensor] = None) -> None:
        self.done += 1
        self.bar.update_absolute(self.done, self.total, self._preview(preview_tokens))

    def _preview(self, tokens: Optional[torch.Tensor]):
        if tokens is None or self.codebook is None:
            return None
        from PIL import Image

        h, w = tokens.shape[-2:]
        scale = max(1, min(self.pixel_scale, PREVIEW_MAX_SIDE // max(h, w)))
        # a colour per token, blown up as bytes: scaling the float colours to pixel size first cost ~12x more a step
        rgb = token_colors(self.codebook, tokens[0, 0], scale=1)
        picture = Image.fromarray((rgb.numpy() * 255).astype("uint8")).resize((w * scale, h * scale), Image.NEAREST)
        return ("JPEG", picture, None)  # None: sent as drawn


def check_interrupt() -> None:
    mm.throw_exception_if_processing_interrupted()
