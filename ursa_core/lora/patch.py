"""LoRA deltas applied where each decoder layer's weights are fetched (URSATransformer.decoder_layers).

A LoRA'd handle of a model shares every module and weight with the model; only its `layer_fetch` differs: a
`LoRAFetch` wraps whatever fetch the model had (block swap streaming a layer into a device slot, or none) and hands
the caller, for each layer a LoRA touches, a scratch layer holding W + sum_i strength_i * scale_i * B_i @ A_i (the
merged weights PEFT's `merge_and_unload` computes), filled on the layer's device just before it runs. The base weights
are never written, so applying, changing strength and removing a LoRA is a new handle, never a reload; stored fp8
weights are upcast into the scratch (runtime/weight_dtype.py), fused q/k/v and gate/up weights get each part's delta
in its rows, and compiled layers run the scratch like any other layer.
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import rules
from ..errors import InputError
from ..model.config import TransformerConfig
from ..model.modeling_ursa import FUSED_PROJECTIONS, DecoderLayer, expected_state_shapes
from .files import LoRAFile, LowRank, read_lora

log = logging.getLogger(__name__)

STRENGTH_RANGE = rules.LORA_STRENGTH_RANGE
NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")
_LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def strength(value) -> float:
    return rules.lora_strength(value)


def projection_shapes(config: TransformerConfig) -> dict[str, tuple[int, int]]:
    """Every decoder projection a LoRA may change, by its official module name -> (out, in)."""
    shapes = expected_state_shapes(config)
    return {key[:-len(".weight")]: shape for key, shape in shapes.items()
            if key.startswith("model.layers.") and key.rsplit(".", 2)[-2].endswith("_proj")}


def match(lora: LoRAFile, shapes: Mapping[str, tuple[int, int]]) -> dict[str, LowRank]:
    """The LoRA's modules that are projections of this transformer; a shape that does not fit names the key and
    both shapes (a LoRA for another model size); none at all is an error, the rest one warning with a count."""
    underscored = {name.replace(".", "_"): name for name in shapes}
    matched, unmatched = {}, []
    for module, pair in lora.modules.items():
        name = module if module in shapes else underscored.get(module)
        if name is None:
            unmatched.append(pair.key)
            continue
        if tuple(pair.shape) != tuple(shapes[name]):
            raise InputError(f"lora {lora.source}: '{pair.key}' changes a weight of shape {tuple(pair.shape)} but "
                             f"this model's '{name}.weight' is {tuple(shapes[name])}: a LoRA for another model size")
        matched[name] = pair
    if not matched:
        raise InputError(f"lora {lora.source}: none of its {len(lora.modules)} modules is a decoder projection of "
                         f"this transformer (first: '{unmatched[0]}')")
    ignored = unmatched + list(lora.other_keys)
    if ignored:
        log.warning("lora %s: %d of its keys match no decoder projection of this transformer and are ignored "
                    "(first: '%s')", lora.source, len(ignored), ignored[0])
    return matched


@dataclass(frozen=True)
class AppliedLoRA:
    """One LoRA of a handle: where it came from, its strength and the modules it changes."""
    source: str
    strength: float
    modules: Mapping[str, LowRank]


class LayerDeltas:
    """One decoder layer's deltas from every LoRA of a handle, as stacked factors (up scaled by strength and the
    LoRA's own scale): delta = up @ down, kept in fp32 on the devices that asked for them."""

    def __init__(self, parts: dict[str, list[tuple[float, LowRank]]]):
        self.factors = {name: (torch.cat([s * p.scale * p.up.float() for s, p in pairs], dim=1),
                               torch.cat([p.down.float() for _, p in pairs], dim=0))
                        for name, pairs in parts.items()}
        self._placed: dict[torch.device, dict] = {}

    def delta(self, name: str, device: torch.device) -> torch.Tensor | None:
        """The fp32 delta of projection `name` (e.g. "self_attn.q_proj") on `device`, None when no LoRA changes it."""
        if name not in self.factors:
            return None
        placed = self._placed.setdefault(device, {})
        if name not in placed:
            placed[name] = tuple(t.to(device) for t in self.factors[name])
        up, down = placed[name]
        return up @ down


def dense_weight(linear: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """A projection's weight in the compute dtype, whether stored as is or in fp8 (UpcastLinear)."""
    if hasattr(linear, "dense_weight"):
        return linear.dense_weight(dtype)
    return linear.weight.to(dtype)


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _fused_rows(layer: nn.Module, fused: str, parts: Sequence[str]) -> list[tuple[str, slice]]:
    """(part, rows) of a fused projection: q/k/v or gate/up stacked in the official order."""
    sizes = (_get(layer, "self_attn").qkv_sizes if fused == "self_attn.qkv_proj"
             else [_get(layer, fused).out_features // 2] * 2)
    rows, start = [], 0
    for part, size in zip(parts, sizes):
        rows.append((part, slice(start, start + size)))
        start += size
    return rows


class LoRAFetch:
    """A `layer_fetch` (see URSATransformer.decoder_layers): the inner fetch's layers, each one a LoRA changes handed
    over as a scratch layer holding the merged weights."""
    # runtime/graphs.py: steps with LoRAs run eagerly (the merges are device work, but capturing them is untested)
    not_capturable = "LoRA weights are merged into each layer during a step"

    def __init__(self, inner, config: TransformerConfig, loras: Sequence[AppliedLoRA]):
        self.inner, self.config, self.loras = inner, config, tuple(loras)
        by_layer: dict[int, dict[str, list]] = {}
        for lora in self.loras:
            for module, pair in lora.modules.items():
                index, name = _LAYER_MODULE.match(module).groups()
                by_layer.setdefault(int(index), {}).setdefault(name, []).append((lora.strength, pair))
        self.deltas = {index: LayerDeltas(parts) for index, parts in by_layer.items()}
        self._scratch: dict[tuple, DecoderLayer] = {}

    def layers(self, transformer) -> Iterator[nn.Module]:
        inner = iter(transformer.model.layers) if self.inner is None else self.inner.layers(transformer)
        for index, layer in enumerate(inner):
            deltas = self.deltas.get(index)
            yield layer if deltas is None else self._merged(layer, deltas, transformer)

    def _scratch_for(self, layer: nn.Module, transformer) -> DecoderLayer:
        norm = layer.input_layernorm.weight
        fused = hasattr(layer.self_attn, "qkv_proj")
        key = (norm.device, transformer.dtype, fused)
        if key not in self._scratch:
            with torch.device(norm.device):
                scratch = DecoderLayer(self.config, fused)
            self._scratch[key] = scratch.to(transformer.dtype).eval().requires_grad_(False)
        scratch = self._scratch[key]
        transformer.apply_switches(scratch)   # run as the layer it stands in for: same attention, same kernels
        return scratch

    @torch.no_grad()
    def _merged(self, layer: nn.Module, deltas: LayerDeltas, transformer) -> DecoderLayer:
        scratch = self._scratch_for(layer, transformer)
        dtype, device = transformer.dtype, scratch.input_layernorm.weight.device
        for name in NORMS:
            _get(scratch, name).weight.copy_(_get(layer, name).weight)
        for name, module in scratch.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = dense_weight(_get(layer, name), dtype)
            parts = _fused_rows(layer, name, FUSED_PROJECTIONS[name]) if name in FUSED_PROJECTIONS \
                else [(name, slice(None))]
            changed = [(rows, deltas.delta(part, device)) for part, rows in parts]
            if all(delta is None for _, delta in changed):
                module.weight.copy_(weight)
                continue
            merged = weight.to(torch.float32, copy=True)   # never the base tensor itself (fp32 runs)
            for rows, delta in changed:
                if delta is not None:
                    merged[rows] += delta
            module.weight.copy_(merged)
        return scratch


def with_loras(model, loras: Sequence[tuple[str | Path | LoRAFile, float]]):
    """A handle of `model` with `loras` ((file or folder or LoRAFile, strength), ...) added to any it has: it shares
    every weight with `model` (nothing is reloaded or written), and `model` itself runs as before. Strength 0 adds
    nothing (its file is still read and matched: a wrong file is an error at any strength); with nothing added,
    `model` itself comes back. The same LoRA twice adds its strengths. Speed options (runtime.speed.with_speed) go
    on `model` first: the LoRA wraps whatever layer fetch they set up."""
    shapes = projection_shapes(model.config)
    base = getattr(model.transformer, "layer_fetch", None)
    current = base.loras if isinstance(base, LoRAFetch) else ()
    inner = base.inner if isinstance(base, LoRAFetch) else base
    added = []
    for source, value in loras:
        lora = source if isinstance(source, LoRAFile) else read_lora(source)
        applied = AppliedLoRA(lora.source, strength(value), match(lora, shapes))
        if applied.strength != 0:   # a zero delta would still re-merge its layers every step and rule out graphs
            added.append(applied)
    if not added:
        return model
    view = copy.copy(model.transformer)   # the same modules and weights; its own layer fetch
    view.layer_fetch = LoRAFetch(inner, model.config, (*current, *added))
    return replace(model, transformer=view)


def applied_loras(model) -> tuple[AppliedLoRA, ...]:
    fetch = getattr(model.transformer, "layer_fetch", None)
    return fetch.loras if isinstance(fetch, LoRAFetch) else ()
