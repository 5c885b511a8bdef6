"""URSA Devices in the graph (ComfyUI stubs, the tiny checkpoint, two "devices" that are both the CPU): a handle and a
ModelPatcher per device, the sampler's branch split and batch give one device's tokens, cancel stops every device,
and a device that does not exist is one line at validation."""
from pathlib import Path

import pytest
import torch

from test_nodes import SIZE, env, load, sample  # noqa: F401 - env is a fixture

TWO_CPUS = "cpu, cpu"


def devices(env, model, names=TWO_CPUS, strategy="auto"):
    return env.run(env.mods["devices"].URSADevices, model=model, devices=names, strategy=strategy).result[0]


@pytest.fixture
def denv(env):
    from nodes import nodes_devices
    env.mods["devices"] = nodes_devices
    return env


def test_each_device_gets_a_handle_and_a_patcher_of_its_own(denv):
    model, _, _ = load(denv)
    spread = devices(denv, model, "cpu, cpu, cpu")
    handles = spread.handles
    assert len(handles) == 3 and handles[0].patcher is model.patcher   # the loader's handle serves its device
    transformers = [h.model.transformer for h in handles]
    assert len({id(t) for t in transformers}) == 3                    # modules of their own ...
    weights = {t.lm_head.weight.data_ptr() for t in transformers}     # ... on the loaded weights until ComfyUI
    assert len(weights) == 1                                          # moves each copy to its device
    assert [p.model for p in denv.patchers[-2:]] == transformers[1:]  # registered with ComfyUI's model management
    assert all(str(p.load_device) == "cpu" for p in denv.patchers[-2:])
    assert model.copies == ()                                          # the loader's output is left as it was


def test_branch_split_in_the_sampler_gives_the_single_device_tokens(denv):
    model, _, cond = load(denv)
    single = sample(denv, model, cond, frames=5, cfg=5.0)
    denv.state.load_calls.clear()
    spread = devices(denv, model)
    split = sample(denv, spread, cond, frames=5, cfg=5.0)
    assert torch.equal(split.tokens, single.tokens)
    loaded = denv.state.load_calls[-1]["models"]     # both copies go through load_models_gpu, together
    assert loaded == [h.patcher for h in spread.handles]


@pytest.mark.parametrize("strategy", ["auto", "samples"])
def test_batch_over_devices_equals_single_runs_with_seed_plus_i(denv, strategy):
    model, _, cond = load(denv)
    spread = devices(denv, model, strategy=strategy)
    denv.progress_updates.clear()
    batch = sample(denv, spread, cond, seed=4, batch_size=3)
    assert batch.tokens.shape == (3, 1, 4, 4)
    assert len(denv.progress_updates) == 3 * 3 and denv.progress_updates[-1]["value"] == 9
    for i in range(3):
        alone = sample(denv, model, cond, seed=4 + i)
        assert torch.equal(batch.tokens[i:i + 1], alone.tokens)


def test_batch_decodes_to_one_image_batch_in_order(denv):
    model, vq, cond = load(denv)
    batch = sample(denv, devices(denv, model), cond, frames=5, seed=2, batch_size=2)
    images = denv.run(denv.mods["tok"].URSATokenizerDecode, vq=vq, tokens=batch).result[0]
    second = denv.run(denv.mods["tok"].URSATokenizerDecode, vq=vq, tokens=sample(denv, model, cond, frames=5,
                                                                                  seed=3)).result[0]
    # samples in order, frames of one sample together (the decoder's convolutions round a batch of two and a
    # batch of one differently in the last bits; the tokens are equal, see above)
    assert images.shape == (2 * 5, 32, 32, 3) and torch.allclose(images[5:], second, atol=1e-5)
    assert not torch.allclose(images[:5], second, atol=1e-2)


def test_cancel_stops_every_device(denv):
    model, _, cond = load(denv)
    spread = devices(denv, model, strategy="samples")
    denv.progress_updates.clear()
    denv.interrupt_after(2)
    with pytest.raises(denv.InterruptProcessingException):
        sample(denv, spread, cond, steps=6, batch_size=2)
    assert len(denv.progress_updates) == 2   # no step reported after the cancel


def test_extend_video_over_two_devices_gives_the_single_device_tokens(denv):
    model, _, cond = load(denv)
    base = sample(denv, model, cond, frames=9)
    args = dict(conditioning=cond, tokens=base, windows=2, window_frames=9, overlap=1, seed=0, steps=2, cfg=3.0,
                guidance_trunc=0.9, carry_start=1.0, window_prompts="")
    extend = denv.mods["extend"].URSAExtendVideo
    one = denv.run(extend, model=model, **args).result[0]
    two = denv.run(extend, model=devices(denv, model), **args).result[0]
    assert torch.equal(one.tokens, two.tokens) and two.tokens.shape[1] == 3 + 2 * 2


@pytest.mark.parametrize("names, expected", [
    ("cpu, cuda:3", "devices='cpu, cuda:3': device='cuda:3' is not available: this machine has no CUDA GPU"),
    ("cpu, gpu0", "devices='cpu, gpu0': device='gpu0' is not allowed: use auto, cpu, cuda or cuda:N"),
    ("", "devices='' is not allowed: name 1 to 16 devices separated by commas"),
    ("cpu,,cpu", "devices='cpu,,cpu' is not allowed: name 1 to 16 devices"),
    ("auto", "devices='auto': name each device (cpu, cuda:N), not auto"),
])
def test_a_device_that_does_not_exist_is_one_line_at_validation(denv, names, expected):
    node = denv.mods["devices"].URSADevices
    errors = denv.validate(node, {"model": ["1", 0], "devices": names, "strategy": "auto"})
    assert len(errors) == 1 and expected in str(errors[0]) and "\n" not in str(errors[0])
    assert denv.validate(node, {"model": ["1", 0], "devices": TWO_CPUS, "strategy": "auto"}) == []
    assert "'ring' not in ['auto', 'branches', 'samples']" in str(
        denv.validate(node, {"model": ["1", 0], "devices": TWO_CPUS, "strategy": "ring"}))


def test_sampler_batch_size_range(denv):
    sampler = denv.mods["sampler"].URSASampler
    base = {"model": ["1", 0], "conditioning": ["2", 0], "seed": 0, "steps": 4, "cfg": 7.0, "guidance_trunc": 0.9,
            "frames": 1, "width": 32, "height": 32, "c": 0.0, "alpha": 0.0, "shift": 0.0}
    assert denv.validate(sampler, {**base, "batch_size": 4}) == []
    errors = denv.validate(sampler, {**base, "batch_size": 0})
    assert [(e["type"], e["details"], e["message"]) for e in errors] == [
        ("value_smaller_than_min", "batch_size", "Value 0 smaller than min of 1")]


@pytest.mark.parametrize("state, streamed", [("NORMAL_VRAM", [False, True]), ("LOW_VRAM", [False, True]),
                                             ("NO_VRAM", [True, True])])
def test_block_swap_is_decided_per_device(denv, monkeypatch, state, streamed):
    """Each device's handle reads that device's free memory and ComfyUI's VRAM state (--lowvram / --novram), as
    core decides a partial load per model: a roomy cuda:0 keeps every layer (--lowvram: as many as fit, here all),
    a nearly full cuda:1 streams them, and --novram streams on both."""
    from nodes import glue
    model, _, _ = load(denv)
    mm = denv.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState[state])
    free = {torch.device("cuda", 0): 40 << 30, torch.device("cuda", 1): 1 << 20}
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: free[torch.device(dev)])
    spread = glue.on_devices(model, [torch.device("cuda", 0), torch.device("cuda", 1)], "auto")
    assert [h.model.transformer.layer_fetch is not None for h in spread.handles] == streamed
    assert [str(h.patcher.load_device) for h in spread.handles] == ["cuda:0", "cuda:1"]


def _random_lora(env, model) -> str:
    """A single-file LoRA (lora_down/lora_up + alpha) on every projection of the tiny model, in models/loras/."""
    from safetensors.torch import save_file

    from ursa_core.lora.patch import projection_shapes
    gen, state = torch.Generator().manual_seed(7), {}
    for name, (out, inp) in projection_shapes(model.model.config).items():
        state[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(4, inp, generator=gen)
        state[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(out, 4, generator=gen) / out ** 0.5
        state[f"diffusion_model.{name}.alpha"] = torch.tensor(4.0)
    folder = Path(env.models_dir) / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "style.safetensors"))
    return "style.safetensors"


def test_a_lora_chained_before_or_after_devices_is_on_every_copy(denv):
    """Both guidance branches (and every sample) must see the LoRA: URSA Devices after URSA LoRA Loader copies it
    onto each new handle, and a LoRA added after URSA Devices goes onto every copy."""
    from nodes import nodes_lora

    from ursa_core.lora.patch import applied_loras
    model, _, cond = load(denv)
    name = _random_lora(denv, model)

    def lora(m):
        return denv.run(nodes_lora.URSALoraLoader, model=m, lora_name=name, strength=1.0).result[0]
    single = sample(denv, lora(model), cond, frames=5, cfg=5.0).tokens
    assert not torch.equal(single, sample(denv, model, cond, frames=5, cfg=5.0).tokens)   # the LoRA matters
    for spread in (devices(denv, lora(model)), lora(devices(denv, model))):
        assert [len(applied_loras(h.model)) for h in spread.handles] == [1, 1]
        assert torch.equal(sample(denv, spread, cond, frames=5, cfg=5.0).tokens, single)
        assert torch.equal(sample(denv, spread, cond, seed=1, batch_size=2).tokens[0:1],
                           sample(denv, lora(model), cond, seed=1).tokens)
