"""LoRAs on a model: the same logits as PEFT's merged model (fp32, CPU), strength 0 = the base, stacked LoRAs = their
summed merge, the base never written; with fused projections, fp8 storage, block swap and compile; through the
library, the CLI and the URSA LoRA Loader node."""
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ursa_core
from ursa_core import cli
from ursa_core.errors import InputError
from ursa_core.lora.patch import applied_loras, dense_weight, with_loras
from ursa_core.model.modeling_ursa import build_transformer
from ursa_core.model.sequence import build_sequence

peft = pytest.importorskip("peft")
from lora_fixtures import peft_adapter  # noqa: E402 - needs peft

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=0, atol=1e-5)


def peft_lora(model, folder, seed, **config):
    """A PEFT LoRA in upstream's format (.bin) and PEFT's merged transformer."""
    return peft_adapter(model, folder, seed, **config).merge_and_unload()


@pytest.fixture(scope="module")
def model(tiny_dir):
    return ursa_core.load(tiny_dir, dtype="fp32")


@pytest.fixture(scope="module")
def adapters(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: (root / name, peft_lora(model, root / name, seed))
            for seed, name in enumerate(["style", "light"])}


@pytest.fixture(scope="module")
def sequence(model):
    tokens = torch.randint(0, model.codebook_size, (1, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    return build_sequence(model, model.prompts.encode(["a red fox"]), tokens)


def logits(model, sequence):
    with torch.no_grad():
        return model(sequence)


def merged_logits(transformer, sequence):
    with torch.no_grad():
        return transformer(sequence.input_ids, sequence.cos, sequence.sin)


def peft_stacked(model, folders):
    """PEFT's own merge of several adapters active together (their deltas summed)."""
    from peft import PeftModel
    names = [f"a{i}" for i in range(len(folders))]
    wrapped = PeftModel.from_pretrained(copy.deepcopy(model.transformer), str(folders[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:]):
        wrapped.load_adapter(str(folder), adapter_name=name)
    wrapped.base_model.set_adapter(names)
    return wrapped.merge_and_unload()


def test_same_logits_as_peft_merged_model(model, adapters, sequence):
    folder, merged = adapters["style"]
    lora = with_loras(model, [(folder, 1.0)])
    torch.testing.assert_close(logits(lora, sequence), merged_logits(merged, sequence), **TOL)
    assert not torch.allclose(logits(lora, sequence), logits(model, sequence), atol=1e-3)  # it does change them


def test_strength_zero_is_the_base_and_stacked_loras_are_their_summed_merge(model, adapters, sequence):
    base_state = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    base = logits(model, sequence)
    (a, _), (b, _) = adapters["style"], adapters["light"]
    assert torch.equal(logits(with_loras(model, [(a, 0.0)]), sequence), base)
    both = with_loras(model, [(a, 1.0), (b, 1.0)])
    torch.testing.assert_close(logits(both, sequence), merged_logits(peft_stacked(model, [a, b]), sequence), **TOL)
    chained = with_loras(with_loras(model, [(a, 1.0)]), [(b, 1.0)])   # as two chained loader nodes
    torch.testing.assert_close(logits(chained, sequence), logits(both, sequence), rtol=0, atol=1e-6)
    assert [lora.source for lora in applied_loras(chained)] == [str(a / "adapter_model.bin"),
                                                                str(b / "adapter_model.bin")]
    # nothing of the base was written, and it runs as before
    assert all(torch.equal(model.transformer.state_dict()[k], v) for k, v in base_state.items())
    assert torch.equal(logits(model, sequence), base)


def test_strength_zero_adds_no_layer_fetch_but_a_wrong_file_still_errors(model, adapters, tmp_path):
    from safetensors.torch import save_file
    (a, _), (b, _) = adapters["style"], adapters["light"]
    # nothing to merge: no layer re-merged each step, and CUDA graphs stay possible (runtime/graphs.py)
    assert with_loras(model, [(a, 0.0)]).transformer.layer_fetch is None
    styled = with_loras(model, [(a, 1.0)])
    assert with_loras(styled, [(b, 0.0)]) is styled
    assert [lora.source for lora in applied_loras(with_loras(model, [(a, 0.0), (b, 0.5)]))] == [
        str(b / "adapter_model.bin")]
    save_file({"unet.down.0.lora_down.weight": torch.zeros(2, 8), "unet.down.0.lora_up.weight": torch.zeros(8, 2)},
              str(tmp_path / "sd.safetensors"))
    with pytest.raises(InputError, match="none of its 1 modules is a decoder projection"):
        with_loras(model, [(tmp_path / "sd.safetensors", 0.0)])


def test_fused_projections_get_each_parts_delta(tiny_dir, adapters, sequence):
    folder, merged = adapters["style"]
    fused = ursa_core.load(tiny_dir, dtype="fp32", fuse_projections=True)
    assert hasattr(fused.transformer.model.layers[0].self_attn, "qkv_proj")
    torch.testing.assert_close(logits(with_loras(fused, [(folder, 1.0)]), sequence),
                               merged_logits(merged, sequence), **TOL)


def test_fp8_stored_weights_take_the_delta_on_their_upcast(tiny_dir, adapters, sequence):
    from ursa_core.runtime.weight_dtype import store_weights
    folder, merged = adapters["style"]
    fp8 = ursa_core.load(tiny_dir, dtype="fp32")
    store_weights(fp8.transformer, "fp8_e4m3fn")
    base = ursa_core.load(tiny_dir, dtype="fp32").transformer.state_dict()
    # expected: each projection's upcast fp8 weight plus the LoRA's delta (merged - base)
    state = dict(base)
    for name, module in fp8.transformer.named_modules():
        if hasattr(module, "dense_weight"):
            key = f"{name}.weight"
            state[key] = dense_weight(module, torch.float32) + (merged.state_dict()[key] - base[key])
    expected = build_transformer(fp8.config, state, torch.float32)
    torch.testing.assert_close(logits(with_loras(fp8, [(folder, 1.0)]), sequence), merged_logits(expected, sequence),
                               **TOL)


def test_block_swap_streams_the_base_and_merges_each_streamed_layer(tiny_dir, adapters, sequence):
    from ursa_core.runtime.lowvram import enable_low_vram
    folder, merged = adapters["style"]
    swapped = ursa_core.load(tiny_dir, dtype="fp32")
    enable_low_vram(swapped.transformer, "cpu", blocks_on_gpu=1)   # layer 0 resident, layer 1 streamed
    assert len(swapped.transformer.model.layers) == 1
    torch.testing.assert_close(logits(with_loras(swapped, [(folder, 1.0)]), sequence),
                               merged_logits(merged, sequence), **TOL)


def test_compiled_layers_run_the_merged_weights(tiny_dir, adapters, sequence):
    from ursa_core.runtime.compiled import compile_layers
    folder, merged = adapters["style"]
    compiled = ursa_core.load(tiny_dir, dtype="fp32")
    compile_layers(compiled.transformer, backend="aot_eager")
    lora = with_loras(compiled, [(folder, 1.0)])
    torch.testing.assert_close(logits(lora, sequence), merged_logits(merged, sequence), **TOL)
    torch.testing.assert_close(logits(with_loras(compiled, [(folder, 0.5)]), sequence),
                               logits(with_loras(ursa_core.load(tiny_dir, dtype="fp32"), [(folder, 0.5)]), sequence),
                               **TOL)


def test_generate_with_a_lora_and_the_base_after_it(model, adapters):
    folder, _ = adapters["style"]
    settings = dict(frames=1, height=32, width=32, steps=3, seed=4)
    before = ursa_core.generate(model, "a fox", **settings).tokens
    styled = ursa_core.generate(with_loras(model, [(folder, 1.0)]), "a fox", **settings).tokens
    assert not torch.equal(styled, before)
    assert torch.equal(ursa_core.generate(model, "a fox", **settings).tokens, before)


def test_cli_lora_flag_checks_before_loading_and_applies(tiny_dir, adapters, tmp_path, capsys, mocker):
    folder, _ = adapters["style"]
    args = ["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--steps", "2", "--height", "32", "--width",
            "32", "--seed", "3"]
    assert cli.main([*args, "--out", str(tmp_path / "base.png"), "--save-tokens", str(tmp_path / "b.safetensors")]) == 0
    assert cli.main([*args, "--lora", f"{folder}:0.7", "--out", str(tmp_path / "lora.png"),
                     "--save-tokens", str(tmp_path / "l.safetensors")]) == 0
    assert f"+ LoRA {folder} x0.7" in capsys.readouterr().out
    from ursa_core.files.token_io import load_tokens
    assert not torch.equal(load_tokens(tmp_path / "b.safetensors")[0], load_tokens(tmp_path / "l.safetensors")[0])
    big = ursa_core.checkpoint.tiny.make_tiny(tmp_path / "URSA-1.7B-FSQ320", shape="1.7B")
    other = tmp_path / "other"
    peft_lora(ursa_core.load(big, dtype="fp32", load_vae=False), other, 0)
    load = mocker.spy(ursa_core.checkpoint.loader, "load_state_dict")
    assert cli.main([*args, "--lora", str(other), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert ("changes a weight of shape (256, 256) but this model's 'model.layers.0.self_attn.q_proj.weight' is "
            "(256, 64)") in err and load.call_count == 0
    assert cli.main([*args, "--lora", f"{folder}:nan", "--out", str(tmp_path / "x.png")]) == 2
    assert "strength=nan is not allowed" in capsys.readouterr().err


def test_lora_loader_node_chains_and_leaves_the_base_model_alone(comfy, tiny_dir, adapters):
    shutil.copytree(tiny_dir, f"{comfy.models_dir}/ursa/URSA-tiny")
    for name, (folder, _) in adapters.items():
        shutil.copytree(folder, f"{comfy.models_dir}/loras/{name}")
    from nodes import nodes_loader, nodes_lora, nodes_sampler, nodes_text
    node = nodes_lora.URSALoraLoader
    assert node.GET_SCHEMA().input_by_id("lora_name").options == ["light/adapter_model.bin",
                                                                   "style/adapter_model.bin"]
    model = comfy.run(nodes_loader.URSAModelLoader, model_name="URSA-tiny", dtype="fp32").result[0]
    cond = comfy.run(nodes_text.URSATextEncode, model=model, prompt="a fox", negative_prompt="",
                     motion_score=9.0).result[0]

    def sample(m):
        return comfy.run(nodes_sampler.URSASampler, model=m, conditioning=cond, seed=1, steps=3, cfg=3.0,
                         guidance_trunc=0.9, frames=1, width=32, height=32, c=0.0, alpha=0.0, shift=0.0,
                         preview=False).result[0].tokens
    before = sample(model)
    one = comfy.run(node, model=model, lora_name="style/adapter_model.bin", strength=1.0).result[0]
    two = comfy.run(node, model=one, lora_name="light/adapter_model.bin", strength=0.5).result[0]
    assert [lora.strength for lora in applied_loras(two.model)] == [1.0, 0.5]
    assert two.patcher is model.patcher   # the same weights under ComfyUI's model management
    assert not torch.equal(sample(two), before)
    assert torch.equal(sample(model), before)
    assert comfy.run(node, model=model, lora_name="style/adapter_model.bin", strength=0.0).result[0] is model
    # core's own checks, on their inputs: the strength's range (NaN included) and the file list
    assert "Value nan smaller than min of -100.0" in str(comfy.validate(
        node, {"model": ["1", 0], "lora_name": "style/adapter_model.bin", "strength": float("nan")}))
    missing = comfy.validate(node, {"model": ["1", 0], "lora_name": "gone.safetensors", "strength": 1.0})
    assert "gone.safetensors" in str(missing) and "lora_name" in str(missing)


def test_a_lora_pickle_with_code_is_refused_untouched(model, tmp_path):
    from test_transformer_weights import malicious
    path = malicious(tmp_path / "evil.bin", tmp_path / "ran")
    before = path.read_bytes()
    with pytest.raises(InputError, match="refused: not a tensors-only file"):
        with_loras(model, [(path, 1.0)])
    assert not (tmp_path / "ran").exists() and path.read_bytes() == before


def test_batch_applies_loras_records_them_and_a_changed_lora_makes_outputs_stale(tiny_dir, adapters, tmp_path):
    import hashlib
    import json
    folder, _ = adapters["style"]
    (tmp_path / "set.txt").write_text("a fox\n")
    common = [sys.executable, "-m", "ursa_core", "batch", "--model", str(tiny_dir), "--prompts",
              str(tmp_path / "set.txt"), "--height", "32", "--width", "32", "--steps", "2", "--seed", "5"]

    def batch(outdir, *extra):
        return subprocess.run([*common, "--outdir", str(tmp_path / outdir), *extra], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
    runs = {}
    for name, extra in (("base", []), ("lora", ["--lora", f"{folder}:0.9"])):
        done = batch(name, *extra)
        assert done.returncode == 0, done.stderr
        runs[name] = json.loads((tmp_path / name / "manifest.jsonl").read_text().splitlines()[0])
    digest, config = (hashlib.sha256((folder / name).read_bytes()).hexdigest()[:16]
                      for name in ("adapter_model.bin", "adapter_config.json"))
    assert runs["lora"]["model"]["lora"] == [[digest, 0.9, config]] and "lora" not in runs["base"]["model"]
    outputs = [(tmp_path / name / runs[name]["out"]).read_bytes() for name in ("base", "lora")]
    assert outputs[0] != outputs[1]
    # another strength changes the pixels: the finished output is stale, refused unless --overwrite-stale
    again = batch("lora", "--lora", f"{folder}:0.5")
    assert again.returncode == 2 and "finished output(s) there were made under another" in again.stderr


def test_lora_layers_run_with_the_models_attention_and_fused_kernels(tiny_dir, adapters, monkeypatch):
    from ursa_core.model import fused_ops
    monkeypatch.setattr(fused_ops, "register", lambda: None)   # only the switches are read here: no kernel runs
    fast = ursa_core.load(tiny_dir, dtype="fp32")
    fast.transformer.set_attention("math")
    fast.transformer.set_fused_kernels(fused_ops.KINDS)
    lora = with_loras(fast, [(adapters["style"][0], 1.0)])
    base, scratch = fast.transformer.model.layers[0], next(lora.transformer.decoder_layers())
    assert scratch is not base   # the LoRA'd layer runs as a scratch layer

    def switches(layer):
        names = ("attn_implementation", "fused_kernel", "fused_qk_rope", "fused_swiglu")
        return {(path, name): getattr(module, name) for path, module in layer.named_modules()
                for name in names if hasattr(module, name)}

    assert switches(base)[("self_attn", "attn_implementation")] == "math"
    assert all(value is True for (_, name), value in switches(base).items() if name.startswith("fused"))
    assert switches(scratch) == switches(base)


def test_a_peft_adapters_config_is_part_of_the_batch_fingerprint(tiny_dir, adapters, tmp_path):
    """adapter_config.json's lora_alpha sets a PEFT adapter's scale (its pixels) as much as the weights do: editing it
    makes `ursa batch`'s finished outputs stale, as a changed weights file does."""
    import json

    from ursa_core.cli.batch_command import model_fingerprint
    from ursa_core.lora.files import read_lora
    folder = tmp_path / "adapter"
    shutil.copytree(adapters["style"][0], folder)

    def fingerprint():
        lora = read_lora(folder)
        return lora.modules["model.layers.0.mlp.up_proj"].scale, model_fingerprint(tiny_dir, {}, ((lora, 1.0),))

    scale, before = fingerprint()
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 2 * config["lora_alpha"]}))
    new_scale, after = fingerprint()
    assert new_scale == 2 * scale   # the edit changes what the LoRA adds
    assert after["lora"] != before["lora"] and after["lora"][0][:2] == before["lora"][0][:2]
