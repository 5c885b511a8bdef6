"""LoRA files: PEFT adapter folders (.safetensors and upstream's .bin) and the single files shared for ComfyUI, read
and matched against the transformer; the merged weights equal PEFT's own merge."""
import json
import logging
import math

import pytest
import torch
from safetensors.torch import save_file

from ursa_core.errors import InputError
from ursa_core.lora.files import read_lora
from ursa_core.lora.patch import AppliedLoRA, LoRAFetch, match, projection_shapes, strength

peft = pytest.importorskip("peft")
from lora_fixtures import TARGETS, peft_adapter  # noqa: E402 - needs peft


def merged_layer(model, loras, index=0):
    fetch = LoRAFetch(None, model.config, loras)
    return fetch._merged(model.transformer.model.layers[index], fetch.deltas[index], model.transformer)


@pytest.mark.parametrize("safe", [False, True])
def test_peft_folder_merges_as_peft_does(tiny_model, tmp_path, safe):
    wrapped = peft_adapter(tiny_model, tmp_path / "adapter", scale=0.3, safe=safe, alpha_pattern={"down_proj": 2})
    assert (tmp_path / "adapter" / ("adapter_model.safetensors" if safe else "adapter_model.bin")).is_file()
    lora = read_lora(tmp_path / "adapter")
    assert len(lora.modules) == 2 * len(TARGETS)
    assert lora.modules["model.layers.1.self_attn.q_proj"].scale == 8 / 4
    assert lora.modules["model.layers.1.mlp.down_proj"].scale == 2 / 4   # alpha_pattern
    modules = match(lora, projection_shapes(tiny_model.config))
    expected = wrapped.merge_and_unload().state_dict()
    before = {k: v.clone() for k, v in tiny_model.transformer.state_dict().items()}
    for index in (0, 1):
        ours = merged_layer(tiny_model, [AppliedLoRA(lora.source, 1.0, modules)], index).state_dict()
        for name, tensor in ours.items():
            torch.testing.assert_close(tensor, expected[f"model.layers.{index}.{name}"], rtol=0, atol=1e-6)
    after = tiny_model.transformer.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "merging must never write the base weights"


def test_rslora_scale_and_strength(tiny_model, tmp_path):
    wrapped = peft_adapter(tiny_model, tmp_path / "rs", scale=0.3, use_rslora=True, r=4, lora_alpha=6)
    lora = read_lora(tmp_path / "rs" / "adapter_model.bin")   # the weights file of a folder reads the folder
    assert lora.modules["model.layers.0.mlp.up_proj"].scale == pytest.approx(6 / math.sqrt(4))
    modules = match(lora, projection_shapes(tiny_model.config))
    base = tiny_model.transformer.model.layers[0].mlp.up_proj.weight
    expected = wrapped.merge_and_unload().state_dict()["model.layers.0.mlp.up_proj.weight"]
    half = merged_layer(tiny_model, [AppliedLoRA(lora.source, 0.5, modules)]).mlp.up_proj.weight
    torch.testing.assert_close(half, base + 0.5 * (expected - base), rtol=0, atol=1e-6)
    zero = merged_layer(tiny_model, [AppliedLoRA(lora.source, 0.0, modules)]).mlp.up_proj.weight
    assert torch.equal(zero, base)


def single_file_state(tiny_model, prefix, underscored=False, alpha=None, gen_seed=3):
    gen = torch.Generator().manual_seed(gen_seed)
    state = {}
    for module, (out, inp) in projection_shapes(tiny_model.config).items():
        name = module.replace(".", "_") if underscored else module
        state[f"{prefix}{name}.lora_down.weight"] = torch.randn(2, inp, generator=gen)
        state[f"{prefix}{name}.lora_up.weight"] = torch.randn(out, 2, generator=gen)
        if alpha is not None:
            state[f"{prefix}{name}.alpha"] = torch.tensor(float(alpha))
    return state


@pytest.mark.parametrize("prefix, underscored", [("diffusion_model.", False), ("lora_unet_", True),
                                                 ("transformer.", False), ("", False)])
def test_single_file_naming_maps_to_the_official_modules(tiny_model, tmp_path, prefix, underscored):
    state = single_file_state(tiny_model, prefix, underscored, alpha=1.0)
    save_file(state, str(tmp_path / "lora.safetensors"))
    lora = read_lora(tmp_path / "lora.safetensors")
    modules = match(lora, projection_shapes(tiny_model.config))
    assert set(modules) == set(projection_shapes(tiny_model.config))
    name = "model.layers.1.self_attn.o_proj"
    pair = modules[name]
    key = f"{prefix}{name.replace('.', '_') if underscored else name}"
    assert pair.scale == 0.5 and torch.equal(pair.down, state[f"{key}.lora_down.weight"])   # alpha 1 / rank 2


def test_no_alpha_means_scale_one_and_unmatched_keys_are_one_warning(tiny_model, tmp_path, caplog):
    state = single_file_state(tiny_model, "diffusion_model.")
    state["diffusion_model.lm_head.lora_down.weight"] = torch.zeros(2, 64)
    state["diffusion_model.lm_head.lora_up.weight"] = torch.zeros(100, 2)
    state["diffusion_model.vision.proj.lora_down.weight"] = torch.zeros(2, 8)
    state["diffusion_model.vision.proj.lora_up.weight"] = torch.zeros(8, 2)
    state["diffusion_model.model.embed_tokens.lora_embedding_A"] = torch.zeros(2, 100)   # not a pair we apply
    save_file(state, str(tmp_path / "lora.safetensors"))
    lora = read_lora(tmp_path / "lora.safetensors")
    assert {pair.scale for pair in lora.modules.values()} == {1.0}
    with caplog.at_level(logging.WARNING):
        modules = match(lora, projection_shapes(tiny_model.config))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(modules) == 14 and len(warnings) == 1
    assert "3 of its keys match no decoder projection" in warnings[0] and "lm_head.lora_down" in warnings[0]


def test_a_lora_that_matches_nothing_is_an_error(tiny_model, tmp_path):
    save_file({"unet.down.0.lora_down.weight": torch.zeros(2, 8), "unet.down.0.lora_up.weight": torch.zeros(8, 2)},
              str(tmp_path / "sd.safetensors"))
    with pytest.raises(InputError, match=r"none of its 1 modules is a decoder projection .* 'unet\.down\.0\.lora_down"):
        match(read_lora(tmp_path / "sd.safetensors"), projection_shapes(tiny_model.config))


def test_a_lora_for_another_size_names_the_first_key_and_both_shapes(tiny_model, tmp_path):
    save_file({"model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 1024),
               "model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(2048, 4)},
              str(tmp_path / "big.safetensors"))
    with pytest.raises(InputError, match=r"'model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight' changes a weight of "
                                         r"shape \(2048, 1024\) but this model's .* is \(256, 64\)"):
        match(read_lora(tmp_path / "big.safetensors"), projection_shapes(tiny_model.config))


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "DoRA"), ({"peft_type": "LOHA"}, "peft_type 'LOHA' is not LoRA"),
    ({"bias": "all"}, "bias='all' is not supported"), ({"lora_alpha": "8"}, "'lora_alpha' must be a number"),
])
def test_adapter_configs_peft_can_but_we_cannot_merge_are_refused_by_name(tiny_model, tmp_path, change, message):
    peft_adapter(tiny_model, tmp_path / "a")
    config_path = tmp_path / "a" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(InputError, match=message):
        read_lora(tmp_path / "a")


@pytest.mark.parametrize("key, name", [("model.layers.0.self_attn.q_proj.dora_scale", "DoRA"),
                                       ("model.layers.0.self_attn.q_proj.hada_w1_a", "LoHa"),
                                       ("model.layers.0.self_attn.q_proj.lora_up.bias", "LoRA biases")])
def test_single_files_with_other_adapter_kinds_are_refused_by_name(tmp_path, key, name):
    save_file({"model.layers.0.self_attn.q_proj.lora_down.weight": torch.zeros(2, 64),
               "model.layers.0.self_attn.q_proj.lora_up.weight": torch.zeros(256, 2), key: torch.zeros(1)},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(InputError, match=f"{name} is not supported"):
        read_lora(tmp_path / "x.safetensors")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 101.0])
def test_strength_must_be_finite_and_in_range(value):
    with pytest.raises(InputError, match=f"strength={value!r} is not allowed"):
        strength(value)


def test_other_files_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="a PEFT adapter folder needs adapter_config.json"):
        read_lora(tmp_path / "empty")
    save_file({"model.norm.weight": torch.ones(4)}, str(tmp_path / "full.safetensors"))
    with pytest.raises(InputError, match="no LoRA weights in it"):
        read_lora(tmp_path / "full.safetensors")
    (tmp_path / "lora.ckpt").write_bytes(b"x")
    with pytest.raises(InputError, match="is not a tensor file"):
        read_lora(tmp_path / "lora.ckpt")
