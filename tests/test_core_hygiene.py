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


def test_sage2_is_registered_but_only_by_name_and_only_where_built():
    assert "sage2" in attention.names() and "sage2" not in attention.AUTO_ORDER
    assert "sage2" not in attention.available_names("cpu")
    with pytest.raises(InputError, match="'sage2' is not available on cpu .*scripts/sage2_build.sh"):
        attention.resolve("sage2", "cpu")


def test_sage2_build_is_found_as_files_without_importing_the_package(tmp_path, monkeypatch):
    import importlib
    package = tmp_path / "sageattention"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "_qattn_sm90.cpython-312-x86_64-linux-gnu.so").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert not attention._sage2_extensions_built()  # the quantisation module is missing
    (package / "_fused.cpython-312-x86_64-linux-gnu.so").write_bytes(b"")
    assert attention._sage2_extensions_built()


def test_sage2_calls_the_sm90_kernel_on_the_models_layout(monkeypatch):
    """q/k/v reach the kernel as the model's [B, S, H, D] tensors (NHD, no copies), grouped KV heads as they are,
    with the measured configuration; the output goes back as a [B, H, S, D] view."""
    import sys
    import types
    calls = []

    def kernel(q, k, v, **options):
        calls.append((q, k, v, options))
        return torch.full_like(q, 2.0)
    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn_qk_int8_pv_fp8_cuda_sm90=kernel))
    attend = attention._sage2()
    rows = [torch.randn(1, 7, heads, 128, dtype=torch.bfloat16) for heads in (4, 2, 2)]
    out = attend(*(x.transpose(1, 2) for x in rows))
    (q, k, v, options), = calls
    assert all(a.data_ptr() == b.data_ptr() and a.shape == b.shape for a, b in zip((q, k, v), rows))
    assert options == dict(tensor_layout="NHD", is_causal=False, qk_quant_gran="per_warp",
                           pv_accum_dtype="fp32+fp32", smooth_k=True)
    assert out.shape == (1, 4, 7, 128) and bool((out == 2).all())
    exact = attend(*(x.float().transpose(1, 2) for x in rows))  # fp32 (CPU runs, tests): exact SDPA instead
    assert len(calls) == 1 and exact.shape == (1, 4, 7, 128)
