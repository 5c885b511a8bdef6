"""Loading a `vae/` folder (config.json + diffusers safetensors) and writing tiny random ones for tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..files.safetensors_io import check_state_dict, load_state_dict, read_json, save_state_dict
from .cosmos import CosmosFSQTokenizer
from .fsq import fsq_table_matches  # re-exported for the model loader
from .ibq import IBQTokenizer
from .tiling import VisualTokenizer

CONFIG_NAME = "config.json"
CLASS_BY_NAME = {"AutoencoderVQCosmos3D": CosmosFSQTokenizer, "AutoencoderVQ": IBQTokenizer}
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    # Same key structure as the official checkpoints (4 / 5 levels, 2 layers per block), tiny widths.
    "fsq": {"_class_name": "AutoencoderVQCosmos3D", "block_out_channels": [8, 16, 16, 16], "layers_per_block": 2,
            "latent_channels": 16, "num_vq_embeddings": 64000, "vq_embed_dim": 6, "patch_size": 4,
            "temporal_stride": 4, "spatial_stride": 8, "sample_frames": 49},
    # IBQ GroupNorms always use 32 groups, so every width must be a multiple of 32.
    "ibq": {"_class_name": "AutoencoderVQ", "block_out_channels": [32, 32, 32, 32, 32], "layers_per_block": 1,
            "latent_channels": 8, "num_vq_embeddings": 512, "vq_embed_dim": 4, "norm_num_groups": 32,
            "attn_down_block": True, "attn_up_block": True, "temporal_stride": 1, "spatial_stride": 16},
}

__all__ = ["load_visual_tokenizer", "write_tiny_visual_tokenizer", "fsq_table_matches", "tokenizer_class"]


def tokenizer_class(config: Mapping[str, Any], where: Path) -> type[VisualTokenizer]:
    """Pick the tokenizer from `_class_name`; without one, from keys only one of the two configs has."""
    name = config.get("_class_name")
    if name in CLASS_BY_NAME:
        return CLASS_BY_NAME[name]
    if name is not None:
        raise CheckpointError(f"{where}: _class_name {name!r} is not a URSA visual tokenizer "
                              f"(expected one of {sorted(CLASS_BY_NAME)})")
    if "patch_size" in config or config.get("_quantizer_name") == "FSQuantizer":
        return CosmosFSQTokenizer
    if any(k in config for k in ("attn_down_block", "attn_up_block", "decoder_dtype")) \
            or config.get("_quantizer_name") == "VQuantizer":
        return IBQTokenizer
    raise CheckpointError(f"{where}: has no _class_name and no key that tells a Cosmos (FSQ) from an IBQ tokenizer")


def load_visual_tokenizer(vae_dir: str | Path, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> VisualTokenizer:
    """Build the tokenizer described by vae_dir/config.json and load its weights strictly (every key, every shape)."""
    vae_dir = Path(vae_dir)
    config = read_json(vae_dir / CONFIG_NAME)
    cls = tokenizer_class(config, vae_dir / CONFIG_NAME)
    with torch.device("meta"):
        model = cls(config)  # meta: no memory for random weights that are overwritten at once
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = load_state_dict(vae_dir)
    check_state_dict(expected, state, vae_dir)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def write_tiny_visual_tokenizer(vae_dir: str | Path, kind: str = "fsq", seed: int = 0) -> Path:
    """Write a tiny random tokenizer in the official layout (config.json + diffusion_pytorch_model.safetensors)."""
    if kind not in TINY_CONFIGS:
        raise ValueError(f"kind={kind!r}: expected one of {sorted(TINY_CONFIGS)}")
    vae_dir = Path(vae_dir)
    config = dict(TINY_CONFIGS[kind])
    # Module constructors draw from the global RNG and take no generator; seed a forked RNG so the caller's
    # random state is left exactly as it was (and the tiny weights stay the same for a seed).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLASS_BY_NAME[config["_class_name"]](config)
    vae_dir.mkdir(parents=True, exist_ok=True)
    (vae_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    save_state_dict(model.state_dict(), vae_dir)
    return vae_dir
