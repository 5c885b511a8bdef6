"""Loading an URSA checkpoint folder in the official layout into one `URSAModel` (docs/ARCHITECTURE.md,
"Checkpoint layout")."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import rules
from ..attention.backends import resolve as resolve_attention
from ..errors import CheckpointError
from ..files.safetensors_io import check_state_dict, load_state_dict, read_json, weight_files
from ..files.tensor_files import read_safetensors
from ..model.config import SchedulerConfig, TransformerConfig, check_types
from ..model.modeling_ursa import URSATransformer, build_transformer, expected_state_shapes
from ..model.sequence import ModelInput
from ..path.metric_path import MetricPath
from ..visual_tokenizer.geometry import VisualGeometry
from .defaults import ModelIdentity, identify
from .prompts import PromptEncoder
from .tiny import model_folder

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on GPUs that support it, else fp16 on GPUs, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            rules.choice("dtype", dtype, rules.DTYPES)  # raises, naming the allowed dtypes
        return dtype
    key = str(dtype).lower()
    if key == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if key not in DTYPES:
        rules.choice("dtype", dtype, rules.DTYPES)  # raises, naming the allowed dtypes
    return DTYPES[key]


@dataclass
class URSAModel:
    folder: Path
    config: TransformerConfig
    scheduler: SchedulerConfig
    transformer: URSATransformer
    path: MetricPath
    prompts: PromptEncoder
    geometry: VisualGeometry
    visual_tokenizer: Optional[torch.nn.Module] = None
    identity: Optional[ModelIdentity] = None   # which model this is (checkpoint/defaults.py); found when not given

    def __post_init__(self):
        if self.identity is None:
            self.identity = identify(self.folder, self.config.hidden_size, self.geometry)

    @property
    def device(self) -> torch.device:
        # Read from a weight: ComfyUI's ModelPatcher moves the module and overwrites any `device` attribute.
        return self.transformer.lm_head.weight.device

    @property
    def codebook_size(self) -> int:
        return self.config.lm_head_size

    def __call__(self, sequence: ModelInput, keep: Optional[torch.Tensor] = None,
                 output_hidden_states: bool = False):
        """The transformer on a `build_sequence(...)` input: visual logits, or with output_hidden_states a
        TransformerOutput(logits, hidden_states) as in transformers (see URSATransformer.forward)."""
        return self.transformer(sequence.input_ids, sequence.cos, sequence.sin, keep, output_hidden_states)


# The official layout: the files every checkpoint has, its prompt tokenizer's folder, and the metric path's
# embedding in scheduler/ (the .pth upstream ships, else its safetensors twin).
LAYOUT_FILES = ("model_index.json", "transformer/config.json", "scheduler/scheduler_config.json")
TOKENIZER_FOLDER = "tokenizer"
PATH_EMBEDDING_FILES = ("scheduler_model.pth", "scheduler_model.safetensors")


def check_layout(folder: Path) -> None:
    """Fail early, naming the first missing piece of the official layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    for rel in LAYOUT_FILES:
        if not (folder / rel).is_file():
            raise CheckpointError(f"missing file: {folder / rel} (model folder {folder})")
    if not (folder / TOKENIZER_FOLDER).is_dir():
        raise CheckpointError(f"missing folder: {folder / TOKENIZER_FOLDER} (model folder {folder})")
    index = read_json(folder / "model_index.json")
    for component in ("transformer", "scheduler", "tokenizer"):
        if component not in index:
            raise CheckpointError(f"{folder / 'model_index.json'}: no '{component}' component")


# transformer/config.json keys no other diffusers model has: URSA reads text and visual ids with one vocabulary.
URSA_CONFIG_KEYS = ("lm_vocab_size", "lm_head_size", "bov_token_id")


# Components of the official layout whose weights the model reads (diffusers folders, single file or shards).
WEIGHT_COMPONENTS = ("transformer", "vae")


def looks_like_ursa(folder: Path) -> bool:
    """Whether `folder` is meant to be an URSA checkpoint, complete or not (a download that stopped half way): its
    transformer config has URSA's own keys, or, before that config arrived, its model_index.json names URSA's
    pipeline."""
    folder = Path(folder)
    for path, is_ursa in ((folder / "transformer" / "config.json", lambda d: all(k in d for k in URSA_CONFIG_KEYS)),
                          (folder / "model_index.json", lambda d: d.get("_class_name") == "URSAPipeline")):
        if path.is_file():
            try:
                data = read_json(path)
            except (CheckpointError, OSError):
                continue
            return isinstance(data, dict) and is_ursa(data)
    return False


def layout_gaps(folder: Path) -> list[str]:
    """What `folder` lacks of the official layout ('tokenizer/', 'vae weights', ...), in layout order; empty when
    complete. Reads configs and weight indexes (a missing shard counts), never weights."""
    folder = Path(folder)
    needed = [*LAYOUT_FILES, f"{TOKENIZER_FOLDER}/", "vae/config.json"]
    gaps = [rel for rel in needed if not (folder / rel).exists()]
    if _path_embedding_file(folder / "scheduler") is None:
        gaps.append(f"scheduler/{PATH_EMBEDDING_FILES[0]}")
    for component in WEIGHT_COMPONENTS:
        try:
            weight_files(folder / component)
        except CheckpointError:
            gaps.append(f"{component} weights")
    return gaps


def is_ursa_folder(folder: Path) -> bool:
    """Whether `folder` holds an URSA checkpoint (not just any diffusers folder): the official layout, a transformer
    config with URSA's own keys and the metric path's embedding next to the scheduler config. Reads two small
    files; never loads weights."""
    folder = Path(folder)
    try:
        check_layout(folder)
        config = read_json(folder / "transformer" / "config.json")
    except (CheckpointError, ValueError, OSError):
        return False
    has_path = _path_embedding_file(folder / "scheduler") is not None
    return isinstance(config, dict) and all(key in config for key in URSA_CONFIG_KEYS) and has_path


def _path_embedding_file(scheduler: Path) -> Optional[Path]:
    """The first of PATH_EMBEDDING_FILES in the scheduler folder; None when it has neither."""
    return next((scheduler / name for name in PATH_EMBEDDING_FILES if (scheduler / name).is_file()), None)


def load_transformer(folder: Path, device: torch.device, dtype: torch.dtype, fuse_projections: bool = False,
                     transformer_weights: Optional[str | Path] = None) -> URSATransformer:
    """The folder's transformer; `transformer_weights` (a fine-tune's tensor file) replaces the tensors it holds,
    checked against the base's keys and shapes before the base's weights are read (checkpoint/finetune.py)."""
    folder = Path(folder)
    config = TransformerConfig.from_json(folder / "config.json")
    tuned = {}
    if transformer_weights is not None:
        from .finetune import read_transformer_weights
        tuned = read_transformer_weights(transformer_weights, expected_state_shapes(config))
    state = load_state_dict(folder, skip=tuned)   # the base's tensors a fine-tune replaces are never read
    state.update(tuned)
    q = state.get("model.layers.0.self_attn.q_proj.weight")
    if q is not None and q.shape[0] != config.num_attention_heads * config.head_dim:
        raise CheckpointError(f"{folder}: 'model.layers.0.self_attn.q_proj.weight' has shape {tuple(q.shape)}, "
                              f"expected ({config.num_attention_heads * config.head_dim}, {config.hidden_size}) "
                              f"= num_attention_heads x head_dim {config.head_dim}")
    check_state_dict(expected_state_shapes(config), state, folder)
    return build_transformer(config, state, dtype, fuse_projections).to(device)


def load_path_embedding(folder: Path) -> torch.Tensor:
    """`scheduler_model.pth` {"path.emb": [K, D]} (weights_only), or its `.safetensors` twin."""
    folder = Path(folder)
    pth, safetensors_twin = PATH_EMBEDDING_FILES
    source = _path_embedding_file(folder)
    if source is None:
        raise CheckpointError(f"missing file: {folder / pth} (or {safetensors_twin}) in {folder}")
    if source.name == pth:
        try:
            data = torch.load(str(source), map_location="cpu", weights_only=True)
        except Exception:
            # torch's message suggests weights_only=False (running code from the file): never pass that on.
            raise CheckpointError(f"{source}: holds more than plain tensors, and only tensors are loaded from "
                                  f"checkpoints; provide {safetensors_twin} with the key 'path.emb' instead") from None
    else:
        data = read_safetensors(source, error=CheckpointError)
    if not isinstance(data, dict) or "path.emb" not in data:
        raise CheckpointError(f"{source}: missing key 'path.emb'")
    emb = data["path.emb"]
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
        raise CheckpointError(f"{source}: 'path.emb' must be a [K, D] tensor, found "
                              f"{getattr(emb, 'shape', type(emb).__name__)}")
    return emb


VAE_CONFIG_TYPES = {"temporal_stride": int, "spatial_stride": int, "patch_size": int, "num_vq_embeddings": int,
                    "vq_embed_dim": int, "latent_channels": int, "layers_per_block": int, "block_out_channels": list}


def read_geometry(vae_dir: Path) -> VisualGeometry:
    """The frame and size rules of `vae/config.json`, exactly as the loaded tokenizer will have them, without
    reading any weight (the tokenizer is built on the meta device)."""
    from ..visual_tokenizer.loading import tokenizer_class

    config_path = vae_dir / "config.json"
    if not config_path.is_file():
        return VisualGeometry()
    raw = read_json(config_path)
    check_types(raw, VAE_CONFIG_TYPES, config_path)
    cls = tokenizer_class(raw, config_path)
    with torch.device("meta"):
        return cls(raw).geometry


def load_model(folder: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
               load_vae: bool = True, attention: str = "auto", fuse_projections: bool = False,
               transformer_weights: Optional[str | Path] = None) -> URSAModel:
    """Load transformer, scheduler path, tokenizer (and the visual tokenizer when present) from `folder`, or the tiny
    random checkpoint for "tiny" (as `--model tiny`; built on first use, outputs noise).

    `attention` names a backend of the attention registry (checked against the device before any weight is
    read); `fuse_projections` loads each layer's q/k/v and gate/up weights into single fused matmuls;
    `transformer_weights` is a fine-tuned transformer's tensor file loaded over the folder's (safetensors, or a
    tensors-only .bin/.pt/.pth).
    """
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    attention = resolve_attention(attention, device)
    folder = model_folder(folder)
    check_layout(folder)
    transformer = load_transformer(folder / "transformer", device, dtype, fuse_projections, transformer_weights)
    transformer.set_attention(attention)
    config = transformer.config
    sched = SchedulerConfig.from_json(folder / "scheduler" / "scheduler_config.json")
    emb = load_path_embedding(folder / "scheduler")
    if emb.shape[0] != config.lm_head_size:
        raise CheckpointError(f"{folder / 'scheduler'}: 'path.emb' has {emb.shape[0]} codes but the transformer's "
                              f"lm_head_size is {config.lm_head_size}")
    path = MetricPath(emb, c=sched.c, alpha=sched.alpha, eps=sched.eps).to(device)
    prompts = PromptEncoder(folder / "tokenizer", config)
    model = URSAModel(folder, config, sched, transformer, path, prompts, read_geometry(folder / "vae"))
    if load_vae and (folder / "vae" / "config.json").is_file():
        model.visual_tokenizer = _load_visual_tokenizer(folder / "vae", device, emb)
        model.geometry = model.visual_tokenizer.geometry  # its own rule (e.g. IBQ stride from its levels)
    return model


def _load_visual_tokenizer(vae_dir: Path, device: torch.device, emb: torch.Tensor):
    from ..visual_tokenizer.loading import fsq_table_matches, load_visual_tokenizer

    tokenizer = load_visual_tokenizer(vae_dir, device=device)
    if getattr(tokenizer, "kind", None) == "fsq" and not fsq_table_matches(tokenizer.code_table(), emb):
        log.warning("%s: scheduler path.emb differs from the FSQ code table; using the scheduler's table", vae_dir)
    return tokenizer
