"""No global side effects, and the attention registry's answers (names, availability, one-line errors)."""
import pytest
import torch

from ursa_core.attention import backends as attention
from ursa_core.errors import InputError


def test_writing_a_tiny_tokenizer_leaves_the_callers_rng_alone(tmp_path):
    from ursa_core.visual_tokenizer.loading import write_tiny_visual_tokenizer
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    write_tiny_visual_tokenizer(tmp_path / "a", kind="ibq", seed=0)
    assert torch.equal(torch.rand(4), expected)
    write_tiny_visual_tokenizer(tmp_path / "b", kind="ibq", seed=0)  # and the seed alone decides the weights
    assert (tmp_path / "a" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tmp_path / "b" / "diffusion_pytorch_model.safetensors").read_bytes()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own import-time warnings
def test_compiling_layers_leaves_dynamo_settings_alone():
    from ursa_core.runtime.compiled import CACHE_ENTRIES, _cache_limits, compile_layers
    from ursa_core.model.modeling_ursa import URSATransformer
    from ursa_core.checkpoint.tiny import tiny_transformer_config
    config = torch._dynamo.config
    before = (config.cache_size_limit, config.accumulated_cache_size_limit)
    transformer = URSATransformer(tiny_transformer_config(100, 99, 64))
    compile_layers(transformer)
    assert transformer.layer_call is not None
    assert (config.cache_size_limit, config.accumulated_cache_size_limit) == before
    with _cache_limits():  # what the compiled forward runs under
        assert config.cache_size_limit >= CACHE_ENTRIES
    assert (config.cache_size_limit, config.accumulated_cache_size_limit) == before


def test_attention_names_and_availability():
    assert attention.names()[:2] == ("auto", "sdpa")
    assert {"cudnn", "flash", "efficient", "math", "flex"} <= set(attention.names())
    assert attention.resolve("auto", "cpu") == "sdpa" and attention.resolve("math", "cpu") == "math"
    assert "cudnn" not in attention.available_names("cpu") and "math" in attention.available_names("cpu")
    with pytest.raises(InputError, match="'nope' is not one of"):
        attention.resolve("nope", "cpu")
    with pytest.raises(InputError, match="'cudnn' is not available on cpu"):
        attention.resolve("cudnn", "cpu")


def test_loading_with_an_unavailable_backend_fails_before_reading_weights(tiny_dir, mocker):
    from ursa_core.checkpoint import loader as checkpoint
    spy = mocker.spy(checkpoint, "load_transformer")
    with pytest.raises(InputError, match="not available on cpu"):
        checkpoint.load_model(tiny_dir, device="cpu", attention="cudnn")
    assert spy.call_count == 0
