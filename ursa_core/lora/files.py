"""LoRA files as users have them: PEFT adapter folders and the single files shared for ComfyUI.

* PEFT (upstream's trainer: `get_peft_model` + `save_pretrained(..., safe_serialization=False)`): a folder with
  `adapter_config.json` (r, lora_alpha, alpha_pattern, use_rslora, ...) and `adapter_model.safetensors` or
  `adapter_model.bin`, keys `base_model.model.<module>.lora_A.weight` [r, in] / `.lora_B.weight` [out, r]. The delta of
  a module is scale * B @ A with scale = alpha / r (alpha / sqrt(r) with rslora), as PEFT merges it.
* Single files (ComfyUI / kohya naming): `<module>.lora_down.weight` / `.lora_up.weight` with an optional `.alpha`
  (scale alpha / r; 1 without one, as ComfyUI reads them), under a `diffusion_model.` / `transformer.` /
  `base_model.model.` prefix or kohya's `lora_unet_` with the module path's dots as underscores; also PEFT-named
  keys without a config (scale 1, or the file's `.alpha`).

What this file cannot express as a plain low-rank delta of a projection weight is refused by name (DoRA, LoHa/LoKr,
biases, ...), never half-applied. Modules are named as in the official state dict (`model.layers.3.self_attn.q_proj`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..errors import InputError
from ..files.tensor_files import read_tensors

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")   # safetensors first
DOTTED_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.")
UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_")
_PAIR = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_\-]+)?\.weight$")
DOWN_KINDS = ("lora_A", "lora_down")
# Key fragments of what is not a plain low-rank delta of a weight, and its name in the refusal.
REFUSED_KEYS = {"dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "hada_": "LoHa", "lokr_": "LoKr",
                "lora_B.bias": "LoRA biases", "lora_up.bias": "LoRA biases", ".diff": "full weight differences",
                "modules_to_save": "modules_to_save (whole replacement modules)"}
# adapter_config.json entries that change PEFT's math away from W + scale * B @ A (truthy = refused).
REFUSED_CONFIG = {"use_dora": "DoRA (use_dora)", "lora_bias": "LoRA biases (lora_bias)",
                  "use_qalora": "QA-LoRA (use_qalora)", "alora_invocation_tokens": "activated LoRA",
                  "fan_in_fan_out": "fan_in_fan_out weights", "layer_replication": "layer_replication",
                  "trainable_token_indices": "trainable tokens", "target_parameters": "LoRA on parameters",
                  "arrow_config": "Arrow routing", "use_bdlora": "BD-LoRA (use_bdlora)"}
SUPPORTED_BIAS = "none"


@dataclass(frozen=True)
class LowRank:
    """One module's LoRA: delta = scale * up @ down."""
    down: torch.Tensor   # [r, in]: PEFT's lora_A, kohya's lora_down
    up: torch.Tensor     # [out, r]: PEFT's lora_B, kohya's lora_up
    scale: float
    key: str             # the file's key of `down`, for messages

    @property
    def shape(self) -> tuple[int, int]:
        """The (out, in) shape of the weight it changes."""
        return self.up.shape[0], self.down.shape[1]


@dataclass(frozen=True)
class LoRAFile:
    """A LoRA as read: module name -> its low-rank pair, before it meets a model; `other_keys`: keys of the file that
    are neither a pair's weight nor its alpha (e.g. an embedding LoRA), which nothing applies."""
    source: str
    modules: dict[str, LowRank]
    other_keys: tuple[str, ...] = ()
    config: Optional[str] = None   # a PEFT adapter's adapter_config.json (its alphas set the scales); else None


@dataclass(frozen=True)
class PeftConfig:
    alpha: float
    alpha_pattern: dict
    rslora: bool

    def scale(self, module: str, rank: int) -> float:
        alpha = float(self.alpha_pattern[_pattern_key(self.alpha_pattern, module)]) \
            if _pattern_key(self.alpha_pattern, module) is not None else self.alpha
        return alpha / (math.sqrt(rank) if self.rslora else rank)


def _pattern_key(patterns: Mapping[str, object], module: str) -> Optional[str]:
    """PEFT's pattern rule: a pattern applies to a module whose full name it matches whole or as a dotted suffix."""
    for pattern in patterns:
        if module == pattern or re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module):
            return pattern
    return None


def _read_peft_config(path: Path) -> PeftConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"lora {path}: not a readable adapter_config.json ({exc})") from None
    if raw.get("peft_type", "LORA") != "LORA":
        raise InputError(f"lora {path}: peft_type {raw.get('peft_type')!r} is not LoRA; only LoRA adapters load")
    for key, name in REFUSED_CONFIG.items():
        if raw.get(key):
            raise InputError(f"lora {path}: {name} is not supported (only plain LoRA deltas, optionally rslora)")
    if raw.get("bias", SUPPORTED_BIAS) != SUPPORTED_BIAS:
        raise InputError(f"lora {path}: bias={raw['bias']!r} is not supported: URSA's projections have no bias")
    if not isinstance(raw.get("lora_alpha"), (int, float)) or isinstance(raw.get("lora_alpha"), bool):
        raise InputError(f"lora {path}: 'lora_alpha' must be a number, found {raw.get('lora_alpha')!r}")
    return PeftConfig(float(raw["lora_alpha"]), dict(raw.get("alpha_pattern") or {}), bool(raw.get("use_rslora")))


def _module_name(raw: str) -> str:
    """The official module name behind a key's module part (dotted prefixes dropped; kohya's stays underscored)."""
    for prefix in UNDERSCORE_PREFIXES:
        if raw.startswith(prefix):
            return raw[len(prefix):]
    changed = True
    while changed:
        changed = False
        for prefix in DOTTED_PREFIXES:
            if raw.startswith(prefix) and raw[len(prefix):].startswith(("model.", "lm_head")):
                raw, changed = raw[len(prefix):], True
    return raw


def _refuse_foreign(state: Mapping[str, torch.Tensor], source: str) -> None:
    for key in state:
        for fragment, name in REFUSED_KEYS.items():
            if fragment in key:
                raise InputError(f"lora {source}: {name} is not supported (key '{key}'); only plain LoRA deltas "
                                 f"(lora_A/lora_B or lora_down/lora_up) load")


def _pairs(state: Mapping[str, torch.Tensor], source: str) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    """module -> {"down": (key, tensor), "up": (key, tensor)} of every LoRA pair in `state`."""
    found: dict[str, dict] = {}
    for key, tensor in state.items():
        match = _PAIR.match(key)
        if match is None:
            continue
        side = "down" if match["kind"] in DOWN_KINDS else "up"
        found.setdefault(match["module"], {})[side] = (key, tensor)
    for module, sides in found.items():
        if len(sides) != 2:
            missing = "up (lora_B / lora_up)" if "down" in sides else "down (lora_A / lora_down)"
            raise InputError(f"lora {source}: module '{module}' has no {missing} weight")
        (down_key, down), (_, up) = sides["down"], sides["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise InputError(f"lora {source}: '{down_key}' {tuple(down.shape)} and its up weight {tuple(up.shape)} "
                             f"are not a low-rank pair of linear weights")
    return found


def read_lora(path: str | Path) -> LoRAFile:
    """A LoRA file or PEFT adapter folder (or its adapter_model.* file) -> LoRAFile; one line for anything else."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config_path = folder / CONFIG_NAME
    peft = path.is_dir() or (path.name in WEIGHT_NAMES and config_path.is_file())
    if path.is_dir():
        weights = next((folder / name for name in WEIGHT_NAMES if (folder / name).is_file()), None)
        if not config_path.is_file() or weights is None:
            raise InputError(f"lora {path}: a PEFT adapter folder needs {CONFIG_NAME} and one of "
                             f"{', '.join(WEIGHT_NAMES)}")
        path = weights
    config = _read_peft_config(config_path) if peft else None
    source = str(path)
    state = read_tensors(path, "lora")
    _refuse_foreign(state, source)
    modules, pairs = {}, _pairs(state, source)
    used = {key for sides in pairs.values() for key, _ in sides.values()} | {f"{raw}.alpha" for raw in pairs}
    for raw, sides in pairs.items():
        (down_key, down), (_, up) = sides["down"], sides["up"]
        name, rank = _module_name(raw), down.shape[0]
        alpha = state.get(f"{raw}.alpha")
        if config is not None:
            scale = config.scale(name, rank)
        else:
            scale = 1.0 if alpha is None else float(alpha) / rank
        modules[name] = LowRank(down, up, scale, down_key)
    if not modules:
        raise InputError(f"lora {source}: no LoRA weights in it (no lora_A/lora_B or lora_down/lora_up pairs; first "
                         f"key '{next(iter(state))}')")
    return LoRAFile(source, modules, tuple(key for key in state if key not in used),
                    str(config_path) if config is not None else None)
