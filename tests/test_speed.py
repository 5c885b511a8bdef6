"""Speed options in one home: a handle of the loaded model carries them (the loaded model stays as loaded), and block
swap (where a layer's weights come from) combines with compile (how a layer runs). Tiny checkpoint, CPU."""
import pytest
import torch

from ursa_core.runtime.compiled import compile_layers
from ursa_core.runtime.lowvram import LayerStreamer
from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed
from ursa_core.runtime.weight_dtype import UpcastLinear
from ursa_core.sampling.generate import generate

RUN = dict(frames=5, height=32, width=32, steps=4, seed=6)


def layer_types(transformer):
    return [type(m).__name__ for m in transformer.modules()]


def test_a_handle_carries_the_options_and_leaves_the_loaded_model_as_loaded(tiny_model):
    before = generate(tiny_model, "a fox", **RUN).tokens
    types, attention = layer_types(tiny_model.transformer), tiny_model.transformer.attn_implementation
    handle = with_speed(tiny_model, SpeedOptions(attention="math", weight_dtype="fp8_e4m3fn", low_vram="stream",
                                                 blocks_on_gpu=1), Placement.single("cpu"))
    fast = handle.transformer
    assert fast is not tiny_model.transformer and isinstance(fast.layer_fetch, LayerStreamer)
    assert fast.attn_implementation == "math" and any(isinstance(m, UpcastLinear) for m in fast.modules())
    assert len(fast.model.layers) == 1 and handle.visual_tokenizer is tiny_model.visual_tokenizer
    # the loaded model: same modules, same kernel, every layer resident, the same tokens
    assert layer_types(tiny_model.transformer) == types and tiny_model.transformer.attn_implementation == attention
    assert tiny_model.transformer.layer_fetch is None and tiny_model.transformer.layer_call is None
    assert torch.equal(generate(tiny_model, "a fox", **RUN).tokens, before)


def test_a_handle_shares_the_loaded_weights(tiny_model):
    handle = with_speed(tiny_model, SpeedOptions(), Placement.single("cpu"))
    for (name, mine), theirs in zip(handle.transformer.named_parameters(), tiny_model.transformer.parameters()):
        assert mine is not theirs and mine.data_ptr() == theirs.data_ptr(), name
    assert torch.equal(generate(handle, "a fox", **RUN).tokens, generate(tiny_model, "a fox", **RUN).tokens)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own import-time warnings
def test_streamed_and_compiled_equals_eager_resident(tiny_model):
    """Block swap wraps each layer's weight fetch, so compiled layers run the streamed slots too (traced with
    aot_eager: the same graphs as inductor, without code generation, so the tokens must be identical)."""
    eager = generate(tiny_model, "a fox", **RUN).tokens
    handle = with_speed(tiny_model, SpeedOptions(low_vram="stream", blocks_on_gpu=1), Placement.single("cpu"))
    compile_layers(handle.transformer, backend="aot_eager")
    compiled, calls = handle.transformer.layer_call, []
    handle.transformer.layer_call = lambda layer, *args: calls.append(layer) or compiled(layer, *args)
    assert torch.equal(generate(handle, "a fox", **RUN).tokens, eager)
    slots = list(handle.transformer.stream_slots)
    assert len(calls) == 3 * 2 and set(map(id, calls[1::2])) <= set(map(id, slots))  # 3 forwards x (kept, streamed)


def test_a_streamed_handle_cannot_be_cloned_again(tiny_model):
    handle = with_speed(tiny_model, SpeedOptions(low_vram="stream"), Placement.single("cpu"))
    with pytest.raises(ValueError, match="clone the transformer as loaded"):
        handle.transformer.clone()


def test_auto_block_swap_reads_the_placement(tiny_model):
    cpu = torch.device("cpu")
    plenty = with_speed(tiny_model, SpeedOptions(low_vram="auto"), Placement(cpu, cpu, cpu, free_bytes=1 << 40))
    assert plenty.transformer.layer_fetch is None
    none_left = Placement(cpu, cpu, cpu, free_bytes=1 << 40, vram_state="none")   # as ComfyUI's --novram
    assert len(with_speed(tiny_model, SpeedOptions(low_vram="auto"), none_left).transformer.model.layers) == 0
    unknown = Placement(cpu, cpu, cpu, free_bytes=None, vram_state="none")       # no device memory to save
    assert with_speed(tiny_model, SpeedOptions(low_vram="auto"), unknown).transformer.layer_fetch is None


def test_options_are_checked_when_built():
    from ursa_core.errors import InputError

    for bad, message in ((dict(low_vram="half"), "low_vram='half'"), (dict(blocks_on_gpu=-1), "blocks_on_gpu=-1"),
                         (dict(weight_dtype="fp4"), "weight_dtype='fp4'"), (dict(attention="fast"), "attention='fast'"),
                         (dict(text_device="cuda:99"), "text_device='cuda:99'")):
        with pytest.raises(InputError, match=message):
            SpeedOptions(**bad)
    assert SpeedOptions(low_vram="stream").streams and not SpeedOptions(low_vram="auto").streams
