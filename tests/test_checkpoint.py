"""Loading the official layout: configs, sharded weights, and errors that name folder/file/key/shape."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_fixtures import fresh_copy
from ursa_core.checkpoint.loader import load_model, resolve_dtype
from ursa_core.checkpoint.tiny import make_tiny
from ursa_core.errors import CheckpointError, InputError
from ursa_core.model.config import TransformerConfig

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def test_tiny_layout_and_config(tiny_dir, tiny_model):
    for rel in ("model_index.json", "transformer/config.json", WEIGHTS, "scheduler/scheduler_config.json",
                "scheduler/scheduler_model.pth", "tokenizer/tokenizer.json", "vae/config.json"):
        assert (tiny_dir / rel).is_file(), rel
    raw = json.loads((tiny_dir / "transformer/config.json").read_text())
    assert "head_dim" not in raw and "rms_norm_eps" not in raw  # as the official files
    cfg = tiny_model.config
    assert cfg.head_dim == 128 and cfg.rms_norm_eps == 1e-6
    assert cfg.vocab_size == cfg.lm_vocab_size + cfg.lm_head_size
    assert tiny_model.prompts.tokenizer.convert_ids_to_tokens(cfg.bov_token_id) == "<|vision_start|>"
    assert tiny_model.path.codebook_size == cfg.lm_head_size == 64000


def test_unknown_config_keys_are_tolerated_and_defaults_apply(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "attn_implementation": None, "head_dim": 64,
                                "rms_norm_eps": 1e-5, "_class_name": "URSATransformer3DModel"}))
    cfg = TransformerConfig.from_json(path)
    assert cfg.hidden_size == 64 and cfg.head_dim == 128 and cfg.rms_norm_eps == 1e-6
    assert cfg.max_prompt_length == 320 and cfg.lm_head_size == 64000


def test_sharded_weights_load_identically(tmp_path, tiny_model):
    sharded = make_tiny(tmp_path / "sharded", seed=0, shard=True)
    assert (sharded / "transformer/diffusion_pytorch_model.safetensors.index.json").is_file()
    assert not (sharded / WEIGHTS).exists()
    model = load_model(sharded, dtype="fp32")
    for key, value in tiny_model.transformer.state_dict().items():
        assert torch.equal(model.transformer.state_dict()[key], value), key


@pytest.mark.parametrize("dtype,expected", [("fp32", torch.float32), ("fp16", torch.float16),
                                            ("bf16", torch.bfloat16), ("auto", torch.float32)])
def test_dtypes(tiny_dir, dtype, expected):
    model = load_model(tiny_dir, dtype=dtype, load_vae=False)
    assert model.transformer.dtype == expected


def test_unknown_dtype_is_named():
    with pytest.raises(InputError, match="dtype='fp8' is not allowed: use one of auto, bf16, fp16, fp32"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_missing_folder_and_files(tmp_path, tiny_dir):
    with pytest.raises(CheckpointError, match="model folder not found"):
        load_model(tmp_path / "nope")
    broken = fresh_copy(tiny_dir, tmp_path / "m1")
    (broken / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"no weights in .*transformer"):
        load_model(broken)
    broken = fresh_copy(tiny_dir, tmp_path / "m2")
    (broken / "scheduler/scheduler_model.pth").unlink()
    with pytest.raises(CheckpointError, match="scheduler_model.pth"):
        load_model(broken)
    broken = fresh_copy(tiny_dir, tmp_path / "m3")
    (broken / "model_index.json").unlink()
    with pytest.raises(CheckpointError, match="missing file: .*model_index.json"):
        load_model(broken)


def rewrite_weights(folder, change):
    state = load_file(str(folder / WEIGHTS))
    change(state)
    save_file(state, str(folder / WEIGHTS))


def test_missing_and_misshapen_keys_are_named(tmp_path, tiny_dir):
    broken = fresh_copy(tiny_dir, tmp_path / "k1")
    rewrite_weights(broken, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'model.layers.1.mlp.up_proj.weight'.*\(128, 64\)"):
        load_model(broken)
    broken = fresh_copy(tiny_dir, tmp_path / "k2")
    rewrite_weights(broken, lambda s: s.__setitem__("lm_head.weight", torch.zeros(100, 64)))
    with pytest.raises(CheckpointError, match=r"'lm_head.weight' has shape \(100, 64\), expected \(64000, 64\)"):
        load_model(broken)
    broken = fresh_copy(tiny_dir, tmp_path / "k3")
    rewrite_weights(broken, lambda s: s.__setitem__("model.layers.0.self_attn.q_proj.weight", torch.zeros(128, 64)))
    with pytest.raises(CheckpointError, match="head_dim 128"):
        load_model(broken)


def test_scheduler_errors(tmp_path, tiny_dir):
    broken = fresh_copy(tiny_dir, tmp_path / "s1")
    torch.save({"path.emb": torch.zeros(10, 6)}, str(broken / "scheduler/scheduler_model.pth"))
    with pytest.raises(CheckpointError, match="'path.emb' has 10 codes .* 64000"):
        load_model(broken)
    broken = fresh_copy(tiny_dir, tmp_path / "s2")
    (broken / "scheduler/scheduler_config.json").write_text(json.dumps({"shift": 1.0}))
    with pytest.raises(CheckpointError, match="'alpha' and 'c' are required"):
        load_model(broken)


def test_safetensors_twin_of_scheduler_file(tmp_path, tiny_dir, tiny_model):
    twin = fresh_copy(tiny_dir, tmp_path / "twin")
    emb = torch.load(str(twin / "scheduler/scheduler_model.pth"), weights_only=True)["path.emb"]
    (twin / "scheduler/scheduler_model.pth").unlink()
    save_file({"path.emb": emb}, str(twin / "scheduler/scheduler_model.safetensors"))
    model = load_model(twin, load_vae=False)
    assert torch.equal(model.path.unit, tiny_model.path.unit)


@pytest.mark.parametrize("rel", ["scheduler/scheduler_model.safetensors", WEIGHTS])
def test_a_broken_safetensors_file_is_a_checkpoint_error_naming_it(tmp_path, tiny_dir, rel):
    broken = fresh_copy(tiny_dir, tmp_path / "broken")
    (broken / "scheduler/scheduler_model.pth").unlink()
    (broken / rel).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError) as exc:
        load_model(broken, load_vae=False)
    assert str(broken / rel) in str(exc.value) and "not a readable safetensors file" in str(exc.value)


def test_prompt_encoding(tiny_model):
    enc = tiny_model.prompts
    ids = enc.encode(["a red fox", ""], motion=None)
    pad = enc.pad_token_id
    assert ids.shape == (2, tiny_model.config.max_prompt_length)
    assert bool((ids[1] == pad).all())  # empty negative prompt = all pad
    assert ids[0, 0] == pad and ids[0, -1] != pad  # left padded
    text = enc.tokenizer.decode(enc.encode("a cat", motion=9)[0], skip_special_tokens=True)
    assert text == "motion=9.0, a cat"
    long_ids = enc.encode("fox " * 200)[0]
    assert long_ids[0] != pad and long_ids.shape[0] == tiny_model.config.max_prompt_length  # truncated, first kept
    first = enc.tokenizer("fox fox", add_special_tokens=False)["input_ids"][0]
    assert int(long_ids[0]) == first


def test_scheduler_table_is_checked_against_fsq_levels(tmp_path, tiny_dir, tiny_model, caplog):
    """path.emb equals the FSQ code table in the tiny checkpoint; a different table warns and is still used."""
    from ursa_core.visual_tokenizer.fsq import code_table
    assert torch.allclose(tiny_model.path.unit, torch.nn.functional.normalize(code_table().double(), dim=-1,
                                                                              eps=1e-5).float())
    other = fresh_copy(tiny_dir, tmp_path / "other_table")
    emb = code_table().flip(0)
    torch.save({"path.emb": emb}, str(other / "scheduler/scheduler_model.pth"))
    with caplog.at_level("WARNING"):
        model = load_model(other)
    assert "differs from the FSQ code table" in caplog.text
    assert torch.equal(model.path.unit[0], tiny_model.path.unit[-1])  # the file's table is the one used


def test_package_root_imports_without_comfyui():
    """ComfyUI's entry point module must import (and expose WEB_DIRECTORY) where ComfyUI is absent."""
    import importlib.util
    import pathlib
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("ursa_plugin_root", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    assert "comfy_api" not in sys.modules
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web" and not hasattr(module, "comfy_entrypoint")


class _NotATensor:
    """A pickled object of a custom class: what torch.load(weights_only=True) refuses."""


def test_pickled_code_is_refused_without_suggesting_unsafe_loading(tmp_path, tiny_dir):
    broken = fresh_copy(tiny_dir, tmp_path / "code_file")
    torch.save({"path.emb": _NotATensor()}, str(broken / "scheduler/scheduler_model.pth"))
    with pytest.raises(Exception) as torch_says:  # the hint exists in torch's own message ...
        torch.load(str(broken / "scheduler/scheduler_model.pth"), weights_only=True)
    assert "weights_only" in str(torch_says.value)
    with pytest.raises(CheckpointError) as exc:  # ... and never reaches the user
        load_model(broken)
    message = str(exc.value)
    assert "scheduler_model.pth" in message and "safetensors" in message
    assert "weights_only" not in message and "=False" not in message
