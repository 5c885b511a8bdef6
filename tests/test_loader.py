"""The loader's options: fp8 weight storage, block swap with a count, tokenizer placement, usable attention
backends, URSA-only folder listing, the automatic low-VRAM choice (ursa_core level and through the node stubs)."""
import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from ursa_core.checkpoint.loader import is_ursa_folder
from ursa_core.checkpoint.tiny import random_transformer_state
from ursa_core.errors import InputError
from ursa_core.model.config import TransformerConfig
from ursa_core.model.modeling_ursa import URSATransformer
from ursa_core.model.rope import rotary_cos_sin, sequence_positions
from ursa_core.runtime.loader_options import ACTIVATION_RESERVE, blocks_to_keep
from ursa_core.runtime.lowvram import DetachedEmbedding, enable_low_vram, place_embeddings
from ursa_core.runtime.speed import SpeedOptions
from ursa_core.runtime.weight_dtype import UpcastLinear, store_weights, weight_bytes

CFG = TransformerConfig(hidden_size=64, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
                        num_hidden_layers=4, vocab_size=60 + 37, lm_vocab_size=60, lm_head_size=37,
                        bov_token_id=5, max_prompt_length=6)
GIB = 1 << 30


def transformer(dtype=torch.float32):
    model = URSATransformer(CFG)
    model.load_state_dict(random_transformer_state(CFG, seed=3))
    return model.to(dtype).eval().requires_grad_(False)


def forward(model, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(0, 60, (6,), generator=gen), torch.tensor([5]),
                     torch.randint(0, 37, (12,), generator=gen) + 60])
    cos, sin = rotary_cos_sin(sequence_positions(6, (2, 2, 3)), 128, CFG.rope_theta, dtype)
    return model(ids[None], cos, sin)


# ------------------------------------------------------------------------------------------- weight storage
@pytest.mark.parametrize("name, storage, mantissa_bits", [("fp8_e4m3fn", torch.float8_e4m3fn, 3),
                                                          ("fp8_e5m2", torch.float8_e5m2, 2)])
def test_fp8_storage_rounds_weights_within_fp8_error(name, storage, mantissa_bits):
    linear = torch.nn.Linear(64, 32, bias=False)
    stored = UpcastLinear(linear, storage)
    assert stored.weight.dtype == storage
    restored = stored.weight.float() * stored.weight_scale
    w = linear.weight.detach()
    # round-to-nearest: half an ulp relative to each normal value, plus the subnormal step of the row's scale
    bound = w.abs() * 2.0 ** -(mantissa_bits + 1) + stored.weight_scale * torch.finfo(storage).smallest_normal
    assert ((restored - w).abs() <= bound * 1.0001).all()
    x = torch.randn(5, 64)
    assert torch.allclose(stored(x), x @ restored.T, atol=1e-5)


@pytest.mark.parametrize("name, mantissa_bits", [("fp8_e4m3fn", 3), ("fp8_e5m2", 2)])
def test_fp8_storage_model_is_the_fp8_rounded_model_and_saves_memory(name, mantissa_bits):
    """The only change is the fp8 rounding of the projection weights: the stored model equals a compute-dtype model
    holding the rounded weights, and one MLP (two stacked projections, bf16 compute as on a GPU) moves by less than
    half an fp8 ulp relative to its bf16 output."""
    ref_model = transformer()
    model = copy.deepcopy(ref_model)
    before = sum(weight_bytes(layer) for layer in model.model.layers)
    assert store_weights(model, name) == 7 * CFG.num_hidden_layers
    assert sum(weight_bytes(layer) for layer in model.model.layers) < 0.3 * before  # fp32 -> fp8 + row scales
    rounded = copy.deepcopy(ref_model)
    for layer, stored in zip(rounded.model.layers, model.model.layers):
        for part, stored_part in ((layer.self_attn, stored.self_attn), (layer.mlp, stored.mlp)):
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                if hasattr(part, proj):
                    src = getattr(stored_part, proj)
                    getattr(part, proj).weight.copy_(src.weight.float() * src.weight_scale)
    assert torch.allclose(forward(model), forward(rounded), rtol=1e-5, atol=1e-6)
    bf16 = transformer(torch.bfloat16)
    stored_bf16 = copy.deepcopy(bf16)
    store_weights(stored_bf16, name)
    x = torch.randn(1, 19, CFG.hidden_size, generator=torch.Generator().manual_seed(1)).bfloat16()
    ref, out = bf16.model.layers[0].mlp(x).float(), stored_bf16.model.layers[0].mlp(x).float()
    assert 0 < (out - ref).norm() / ref.norm() < 2.0 ** -(mantissa_bits + 1)


def test_store_weights_default_is_a_no_op_and_rejects_unknown():
    model = transformer()
    assert store_weights(model, "default") == 0
    with pytest.raises(ValueError, match="weight_dtype='fp4'.*default, fp8_e4m3fn, fp8_e5m2"):
        store_weights(model, "fp4")


# ------------------------------------------------------------------------------------------------ block swap
@pytest.mark.parametrize("keep", [0, 1, 3])
def test_block_swap_keeps_count_and_matches_resident(keep):
    model = transformer()
    ref = forward(model)
    streamed = copy.deepcopy(model)
    streamer = enable_low_vram(streamed, "cpu", blocks_on_gpu=keep)
    assert len(streamed.model.layers) == keep and len(streamer.host) == CFG.num_hidden_layers - keep
    assert torch.equal(forward(streamed), ref)
    layer = weight_bytes(model.model.layers[0])
    # what the device holds: the kept layers and two slots, never the streamed layers
    streamed_count = CFG.num_hidden_layers - keep
    assert weight_bytes(streamed) == weight_bytes(model) - (streamed_count - min(2, streamed_count)) * layer


def test_block_swap_with_every_block_kept_streams_nothing_and_fp8_streams_fp8():
    model = transformer()
    assert enable_low_vram(model, "cpu", blocks_on_gpu=CFG.num_hidden_layers) is None
    assert model.layer_fetch is None and len(model.model.layers) == CFG.num_hidden_layers
    fp8 = transformer()
    store_weights(fp8, "fp8_e4m3fn")
    ref = forward(fp8)
    streamer = enable_low_vram(fp8, "cpu", blocks_on_gpu=1)
    assert torch.float8_e4m3fn in {t.dtype for params in streamer.host for t in params}
    assert torch.equal(forward(fp8), ref)


def test_embeddings_on_their_own_device_leave_the_module_tree():
    model = transformer()
    ref = forward(model)
    placed = copy.deepcopy(model)
    detached = place_embeddings(placed, "cpu")
    assert not any("embed_tokens" in key for key in placed.state_dict())  # a model manager neither moves nor counts it
    assert weight_bytes(model) - weight_bytes(placed) == detached.weight.numel() * 4
    assert torch.equal(forward(placed), ref)
    enable_low_vram(placed, "cpu", blocks_on_gpu=1)  # combines with block swap
    assert placed.model.embed_tokens is detached and torch.equal(forward(placed), ref)


def test_automatic_block_count_like_core():
    layers, other = [GIB] * 28, 2 * GIB
    fits = other + 28 * GIB + ACTIVATION_RESERVE
    assert blocks_to_keep("auto", 0, layers, other, fits, False, False) is None
    # VRAM short: as many layers as fit next to the resident part, two slots and the activation reserve
    assert blocks_to_keep("auto", 0, layers, other, fits - GIB, False, False) == 25
    assert blocks_to_keep("auto", 0, layers, other, fits, True, False) == 26   # --lowvram always streams
    assert blocks_to_keep("auto", 0, layers, other, fits, False, True) == 0    # --novram keeps none
    assert blocks_to_keep("off", 0, layers, other, GIB, True, True) is None
    assert blocks_to_keep("stream", 5, layers, other, 100 * GIB, False, False) == 5
    assert blocks_to_keep("stream", 99, layers, other, 100 * GIB, False, False) == 28


def test_loader_option_rules_name_value_and_rule():
    SpeedOptions(low_vram="auto", blocks_on_gpu=0, vq_device="default", text_device="default")   # allowed
    for bad, named in ((dict(low_vram="half"), "low_vram='half'"), (dict(blocks_on_gpu=-1), "blocks_on_gpu=-1"),
                       (dict(vq_device="cuda:7"), "vq_device='cuda:7'"), (dict(vq_device="cuda:7"), "'cpu'"),
                       (dict(text_device="cuda:9"), "text_device='cuda:9'")):
        with pytest.raises(InputError) as refused:
            SpeedOptions(**bad)
        assert named in str(refused.value)


# --------------------------------------------------------------------------------------------- URSA folders
def not_ursa(src, dst):
    """A diffusers folder in the same layout whose transformer is not URSA's."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "transformer" / "config.json").read_text())
    for key in ("lm_vocab_size", "lm_head_size", "bov_token_id"):
        cfg.pop(key)
    (dst / "transformer" / "config.json").write_text(json.dumps(cfg))
    return dst


def test_only_ursa_folders_are_recognised(tiny_dir, tmp_path):
    assert is_ursa_folder(tiny_dir)
    assert not is_ursa_folder(not_ursa(tiny_dir, tmp_path / "other"))
    assert not is_ursa_folder(tmp_path / "missing")
    no_path = shutil.copytree(tiny_dir, tmp_path / "no_path")
    for f in (no_path / "scheduler").glob("scheduler_model.*"):
        f.unlink()
    assert not is_ursa_folder(no_path)


# ------------------------------------------------------------------------------------------- through the node
@pytest.fixture
def env(comfy, tiny_dir):
    shutil.copytree(tiny_dir, f"{comfy.models_dir}/ursa/URSA-tiny")
    import nodes  # noqa: F401 - imported after the stubs are in sys.modules
    from nodes import glue, nodes_loader, nodes_sampler, nodes_text, nodes_tokenizer
    comfy.mods = dict(loader=nodes_loader, sampler=nodes_sampler, text=nodes_text, tok=nodes_tokenizer, glue=glue)
    return comfy


def run_t2i(env, **options):
    model, vq, _ = env.run(env.mods["loader"].URSAModelLoader, model_name="URSA-tiny", dtype="fp32", **options).result
    cond = env.run(env.mods["text"].URSATextEncode, model=model, prompt="a fox", negative_prompt="",
                   motion_score=9.0).result[0]
    tokens = env.run(env.mods["sampler"].URSASampler, model=model, conditioning=cond, seed=1, steps=2, cfg=5.0,
                     guidance_trunc=0.9, frames=5, width=32, height=32, c=0.0, alpha=0.0, shift=0.0,
                     preview=False).result[0]
    images = env.run(env.mods["tok"].URSATokenizerDecode, vq=vq, tokens=tokens).result[0]
    return model, vq, tokens, images


def test_node_lists_only_ursa_folders_and_gives_download_hint(env, tiny_dir):
    loader = env.mods["loader"].URSAModelLoader
    not_ursa(tiny_dir, Path(env.models_dir) / "ursa" / "SomeOtherPipeline")
    assert loader.GET_SCHEMA().input_by_id("model_name").options == ["URSA-tiny"]
    error = str(env.validate(loader, {"model_name": "SomeOtherPipeline", "dtype": "fp32"}))
    # not found, and the download command too although another model exists
    assert "'SomeOtherPipeline' not found" in error and "available: ['URSA-tiny']" in error
    assert "hf download BAAI/URSA-1.7B-FSQ320 --local-dir" in error
    shutil.rmtree(f"{env.models_dir}/ursa/URSA-tiny")
    error = str(env.validate(loader, {"model_name": "URSA-tiny", "dtype": "fp32"}))
    assert "available: none yet" in error and "hf download BAAI/URSA-1.7B-FSQ320 --local-dir" in error
    # the model library is not flooded: `ursa` is not a folder_paths key, so its shards are never listed
    assert "ursa" not in env.modules["folder_paths"].folder_names_and_paths


@pytest.mark.parametrize("remove,missing", [
    (["tokenizer"], "missing tokenizer/"),
    (["vae/diffusion_pytorch_model.safetensors"], "missing vae weights"),
    (["transformer", "scheduler/scheduler_model.pth"], "missing transformer/config.json, scheduler/scheduler_model.pth, "
                                                       "transformer weights"),
])
def test_node_lists_a_half_downloaded_folder_and_says_what_completes_it(env, tiny_dir, remove, missing):
    """A download that stopped (here: parts of the layout gone) is listed; choosing it names what is missing and the
    command that completes it (hf download resumes into the same folder), before anything loads."""
    half = Path(env.models_dir) / "ursa" / "URSA-1.7B-FSQ320"
    shutil.copytree(tiny_dir, half)
    for rel in remove:
        shutil.rmtree(half / rel) if (half / rel).is_dir() else (half / rel).unlink()
    loader = env.mods["loader"].URSAModelLoader
    assert loader.GET_SCHEMA().input_by_id("model_name").options == ["URSA-1.7B-FSQ320", "URSA-tiny"]
    errors = env.validate(loader, {"model_name": "URSA-1.7B-FSQ320", "dtype": "fp32"})
    assert [e["extra_info"]["input_name"] for e in errors] == ["model_name"]
    assert f"model folder 'URSA-1.7B-FSQ320' is incomplete (a download that stopped?): {missing}; complete it " \
           f"with: hf download BAAI/URSA-1.7B-FSQ320 --local-dir {half}" in errors[0]["details"]
    with pytest.raises(InputError, match="is incomplete"):
        env.run(loader, model_name="URSA-1.7B-FSQ320", dtype="fp32")
    assert env.loaded_models == [] and env.patchers == []


@pytest.mark.parametrize("folder,repo", [
    ("URSA-1.7B-FSQ320", "BAAI/URSA-1.7B-FSQ320"),
    ("ursa-0.6b-ibq1024", "BAAI/URSA-0.6B-IBQ1024"),               # the name as the checkpoint table spells it
    ("models--BAAI--URSA-1.7B-IBQ512/snapshots/0123abc", "BAAI/URSA-1.7B-IBQ512"),   # a Hugging Face cache
    ("URSA-0.6B-IBQ512", None),                                     # an official-looking name no repo has
    ("URSA-mine", None),
    ("my-checkpoint", None),
])
def test_completion_command_names_only_a_released_repository(env, folder, repo):
    """The command that completes a half-downloaded folder names the repository the checkpoint table knows for its
    name, never one made up from the folder's name."""
    path = Path(env.models_dir) / "ursa" / folder
    command = env.mods["glue"].completion_command(path)
    assert command == f"hf download {repo or '<the Hugging Face repo it came from>'} --local-dir {path}"


def test_node_options_have_tooltips_and_usable_attention(env):
    from ursa_core.attention.backends import available_names
    schema = env.mods["loader"].URSAModelLoader.GET_SCHEMA()
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    assert schema.input_by_id("attention").options == list(available_names("cpu"))
    assert "cudnn" not in schema.input_by_id("attention").options  # a CUDA-only kernel is not offered on a CPU
    assert schema.input_by_id("weight_dtype").options == ["default", "fp8_e4m3fn", "fp8_e5m2"]


def test_node_validates_new_options(env):
    loader = env.mods["loader"].URSAModelLoader
    base = {"model_name": "URSA-tiny", "dtype": "fp32"}
    assert env.validate(loader, {**base, "weight_dtype": "fp8_e4m3fn", "low_vram": "stream", "blocks_on_gpu": 1,
                                 "vq_device": "cpu"}) == []
    for name, bad in (("weight_dtype", "int4"), ("vq_device", "cuda:3"), ("text_device", "gpu")):
        errors = env.validate(loader, {**base, name: bad})  # core's membership check, on that widget only
        assert [(e["extra_info"]["input_name"], e["type"]) for e in errors] == [(name, "value_not_in_list")]
    # compile and block swap combine (issue 16: streaming is a layer fetch, compile how a layer runs)
    assert env.validate(loader, {**base, "low_vram": "stream", "compile": True}) == []


def test_node_stream_fp8_and_vq_device_run_the_graph(env):
    _, _, ref_tokens, ref_images = run_t2i(env)
    model, vq, tokens, images = run_t2i(env, low_vram="stream", blocks_on_gpu=1, vq_device="cpu")
    assert len(model.model.transformer.model.layers) == 1 and model.model.transformer.layer_fetch is not None
    assert torch.equal(tokens.tokens, ref_tokens.tokens) and torch.equal(images, ref_images)  # streaming is exact
    assert env.patchers[-1].load_device == torch.device("cpu") and env.patchers[-1].model is vq.vq
    # ComfyUI never half-loads our plain torch modules: the block swap above is the partial load
    assert env.load_calls and all(call["force_full_load"] for call in env.load_calls)
    model, _, tokens, images = run_t2i(env, weight_dtype="fp8_e4m3fn")
    assert model.model.transformer.model.layers[0].mlp.up_proj.weight.dtype == torch.float8_e4m3fn
    assert tokens.tokens.shape == ref_tokens.tokens.shape and images.shape == ref_images.shape


def test_node_text_side_on_another_device(env, monkeypatch):
    _, _, ref_tokens, _ = run_t2i(env)
    mm = env.modules["comfy.model_management"]
    # a load device other than the CPU (cpu:0 compares unequal to cpu, yet runs here)
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cpu", 0))
    model, _, tokens, _ = run_t2i(env, text_device="cpu")
    assert isinstance(model.model.transformer.model.embed_tokens, DetachedEmbedding)
    assert torch.equal(tokens.tokens, ref_tokens.tokens)
    model, *_ = run_t2i(env, text_device="default")  # ComfyUI's text encoder device: the CPU in the stand-ins
    assert isinstance(model.model.transformer.model.embed_tokens, DetachedEmbedding)


def test_node_auto_streams_under_lowvram_like_core(env, monkeypatch):
    mm = env.modules["comfy.model_management"]
    model, *_ = run_t2i(env)  # ComfyUI on the CPU (vram state DISABLED): auto never streams
    assert model.model.transformer.layer_fetch is None
    layer = weight_bytes(model.model.transformer.model.layers[0])
    other = weight_bytes(model.model.transformer) - 2 * layer  # the tiny model has 2 layers
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)  # as ComfyUI sets it for --novram on a GPU
    model, *_ = run_t2i(env)
    assert len(model.model.transformer.model.layers) == 0 and model.model.transformer.layer_fetch is not None
    free = {"bytes": ACTIVATION_RESERVE + other + 3 * layer}  # everything + one layer, or two slots + one layer
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: free["bytes"])
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)  # --lowvram: as many layers as fit stay
    model, *_ = run_t2i(env)
    assert len(model.model.transformer.model.layers) == 1 and model.model.transformer.layer_fetch is not None
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)
    model, *_ = run_t2i(env)
    assert model.model.transformer.layer_fetch is None  # normal state and everything fits: no streaming
    free["bytes"] = ACTIVATION_RESERVE + other + layer
    model, *_ = run_t2i(env)
    assert len(model.model.transformer.model.layers) == 0  # VRAM short: streams although the state is normal



def test_node_compile_stays_when_auto_has_to_stream(env, monkeypatch):
    """Block swap is where a layer's weights come from, compile how a layer runs: auto keeps compile whether or not
    it streams (issue 16; before, streaming dropped compile)."""
    from ursa_core.runtime.lowvram import LayerStreamer
    mm = env.modules["comfy.model_management"]
    loader = env.mods["loader"].URSAModelLoader
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)  # everything fits in the stand-ins' 8 GiB
    model, _, _ = env.run(loader, model_name="URSA-tiny", dtype="fp32", compile=True).result
    assert model.model.transformer.layer_call is not None   # the compiled layers (not run here)
    assert model.compiled  # the sampler says "compiling…" on the first step of each size
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    model, _, _ = env.run(loader, model_name="URSA-tiny", dtype="fp32", compile=True).result
    assert isinstance(model.model.transformer.layer_fetch, LayerStreamer)
    assert model.model.transformer.layer_call is not None and model.compiled


def test_fp8_storage_reaches_fused_projections_too():
    from ursa_core.model.modeling_ursa import build_transformer
    fused = build_transformer(CFG, random_transformer_state(CFG, seed=3), torch.float32, fuse_projections=True)
    store_weights(fused, "fp8_e4m3fn")
    plain = [m for layer in fused.model.layers for m in layer.modules() if type(m) is torch.nn.Linear]
    assert plain == []                                # every projection of every layer is stored in fp8
    assert torch.allclose(forward(fused), forward(store_and_return(transformer(), "fp8_e4m3fn")), atol=1e-4)


def store_and_return(model, weight_dtype):
    store_weights(model, weight_dtype)
    return model
