"""The fused Triton kernels (ursa_core/model/fused_ops.py) against the eager modules they replace, on the CPU through
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET on machines without a GPU; tests/test_cuda.py checks
the compiled kernels). fp32 must agree to rounding; bf16 within a few units in the last place (the interpreter
truncates where the GPU rounds to nearest)."""
import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ursa_core.model.modeling_ursa import RMSNorm
from ursa_core.model.rope import apply_rotary, rotary_cos_sin, sequence_positions

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # conftest sets it where there is no GPU
    pytest.skip("CPU tensors need Triton's interpreter; on a GPU machine tests/test_cuda.py checks the kernels",
                allow_module_level=True)

from ursa_core.model import fused_ops  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from random_model import TINY, random_transformer, with_fused_projections  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def random_norm(width: int, dtype, seed: int) -> RMSNorm:
    norm = RMSNorm(width, 1e-6)
    norm.weight.data = 1 + 0.5 * torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return norm.to(dtype).requires_grad_(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [64, 96])
def test_rms_norm_and_residual_add_match_the_module(dtype, width):
    gen = torch.Generator().manual_seed(width)
    x, delta = (torch.randn(2, 7, width, generator=gen).to(dtype) for _ in range(2))
    norm = random_norm(width, dtype, 1)
    assert relative(fused_ops.rms_norm_kernel(x, norm.weight, norm.eps), norm(x)) < TOLERANCE[dtype]
    summed, normed = fused_ops.rms_norm_kernel(x, norm.weight, norm.eps, delta)
    assert torch.equal(summed, x + delta) if dtype == torch.float32 else relative(summed, x + delta) < 1e-2
    assert relative(normed, norm(x + delta)) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q_heads, kv_heads", [(4, 1), (3, 3)])
def test_qk_norm_rope_matches_eager_on_the_fused_projection_views(dtype, q_heads, kv_heads):
    """q and k as the model hands them: strided views of one [q; k; v] projection output, 3-axis rotary tables of a
    real clip layout (text, BOV, 2 x 2 x 3 latents), a head count that is not a power of two."""
    positions = sequence_positions(5, (2, 2, 3))
    cos, sin = rotary_cos_sin(positions, 128, 1e6, dtype)
    seq = positions.shape[0]
    qkv = torch.randn(2, seq, (q_heads + 2 * kv_heads) * 128, generator=torch.Generator().manual_seed(3)).to(dtype)
    q = qkv[..., :q_heads * 128].unflatten(-1, (q_heads, 128))
    k = qkv[..., q_heads * 128:(q_heads + kv_heads) * 128].unflatten(-1, (kv_heads, 128))
    for x, seed in ((q, 4), (k, 5)):
        norm = random_norm(128, dtype, seed)
        expected = apply_rotary(norm(x), cos.unsqueeze(1), sin.unsqueeze(1))
        out = fused_ops.qk_norm_rope_kernel(x, norm.weight, cos, sin, norm.eps)
        assert out.is_contiguous() and relative(out, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_matches_eager_on_the_fused_gate_up_halves(dtype):
    width = fused_ops.SWIGLU_BLOCK + 476  # a partly filled last block
    gate, up = torch.randn(2, 5, 2 * width, generator=torch.Generator().manual_seed(6)).to(dtype).chunk(2, dim=-1)
    expected = (F.silu(gate.float()) * up.float()).to(dtype)
    assert relative(fused_ops.swiglu_kernel(gate, up), expected) < TOLERANCE[dtype]


def tiny_inputs(transformer, latent=(1, 2, 2)):
    positions = sequence_positions(TINY.max_prompt_length, latent)
    cos, sin = rotary_cos_sin(positions, TINY.head_dim, TINY.rope_theta, transformer.dtype)
    ids = torch.randint(0, TINY.lm_vocab_size, (1, positions.shape[0]), generator=torch.Generator().manual_seed(7))
    return ids, cos, sin


@pytest.fixture(scope="module")
def fp32_transformer():
    return random_transformer(TINY, "cpu", torch.float32)


@pytest.mark.parametrize("fused_projections", [False, True])
def test_every_layer_with_fused_kernels_matches_the_eager_layer(fp32_transformer, fused_projections):
    eager = with_fused_projections(fp32_transformer) if fused_projections else fp32_transformer
    fused = copy.deepcopy(eager)
    fused.set_fused_kernels(fused_ops.KINDS)
    ids, cos, sin = tiny_inputs(eager)
    x = eager.model.embed_tokens(ids)
    with torch.no_grad():
        for mine, theirs in zip(fused.model.layers, eager.model.layers):
            expected = theirs(x, cos, sin)
            assert relative(mine(x, cos, sin), expected) < 1e-5
            x = expected
        assert relative(fused(ids, cos, sin), eager(ids, cos, sin)) < 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own import-time warnings
def test_compiled_layers_call_the_fused_kernels_as_custom_ops(fp32_transformer):
    """torch.compile traces the layers with the kernels as opaque ops (their fake implementations give the shapes);
    aot_eager runs the same graphs as inductor without code generation."""
    from ursa_core.runtime.compiled import compile_layers
    fused = copy.deepcopy(fp32_transformer)
    fused.set_fused_kernels(fused_ops.KINDS)
    compile_layers(fused, backend="aot_eager")
    ids, cos, sin = tiny_inputs(fused)
    with torch.no_grad():
        assert relative(fused(ids, cos, sin), fp32_transformer(ids, cos, sin)) < 1e-5


def test_fused_kernel_kinds_switch_on_and_off(fp32_transformer):
    transformer = copy.deepcopy(fp32_transformer)
    with pytest.raises(ValueError, match="unknown fused kernels"):
        transformer.set_fused_kernels(["softmax"])
    transformer.set_fused_kernels(["qk_rope"])
    attention = transformer.model.layers[0].self_attn
    assert transformer.fused_kernels == {"qk_rope"} and attention.fused_qk_rope and not attention.q_norm.fused_kernel
    transformer.set_fused_kernels(())
    assert not any(getattr(m, name, False) for m in transformer.modules()
                   for name in ("fused_kernel", "fused_qk_rope", "fused_swiglu"))


def test_the_speed_option_leaves_cpu_models_on_their_usual_kernels(tiny_model, caplog):
    from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed
    handle = with_speed(tiny_model, SpeedOptions(fused_kernels=True), Placement.single("cpu"))
    assert handle.transformer.fused_kernels == frozenset()
    assert "fused_kernels needs Triton on a CUDA GPU" in caplog.text
