"""ursa_core.runtime.memory: the estimate against the peaks measured on an H100 (docs/PERFORMANCE.md) and the
refusal line."""
import os

import pytest
import torch

from ursa_core.errors import InputError
from ursa_core.model.config import TransformerConfig
from ursa_core.runtime import memory

GiB = memory.GiB
URSA_1_7B = TransformerConfig()  # the defaults are the released checkpoints' values
TOKENS_49 = 13 * 40 * 64          # 49 x 320 x 512
TOKENS_13 = 4 * 40 * 64


def bf16_cuda(tokens, **kw):
    return memory.estimate(URSA_1_7B, tokens, dtype=torch.bfloat16, device_type="cuda", **kw)


@pytest.mark.parametrize("tokens,measured", [(TOKENS_13, 4.79), (TOKENS_49, 5.59)])
def test_estimate_is_conservative_but_not_absurd(tokens, measured):
    total = bf16_cuda(tokens).total / GiB
    assert measured <= total <= 1.3 * measured


def test_low_vram_estimate_near_the_measured_peak():
    low, full = bf16_cuda(TOKENS_49, low_vram=True), bf16_cuda(TOKENS_49)
    assert abs(low.total / GiB - 4.28) <= 0.15 * 4.28
    assert low.total < full.total and low.activations == full.activations


def test_weights_follow_the_dtype_and_branches_the_activations():
    bf16 = bf16_cuda(TOKENS_13)
    fp32 = memory.estimate(URSA_1_7B, TOKENS_13, dtype=torch.float32, device_type="cuda")
    assert fp32.weights == 2 * bf16.weights
    assert 3.5 * GiB < bf16.weights < 4 * GiB  # ~2.0 B parameters in bf16
    assert bf16_cuda(TOKENS_13, branches=1).activations < bf16.activations
    assert bf16_cuda(TOKENS_13, include_weights=False).weights == 0


def test_math_attention_holds_the_score_matrix():
    assert bf16_cuda(TOKENS_49).attention == 0
    seq = URSA_1_7B.max_prompt_length + 1 + TOKENS_49
    assert bf16_cuda(TOKENS_49, math_attention=True).attention == 2 * 16 * seq * seq * 4


def test_4001_frames_are_refused_on_an_h100_with_what_to_change():
    need = bf16_cuda(1001 * 40 * 64)
    with pytest.raises(InputError) as exc:
        memory.check_fits(need, torch.device("cuda:0"), "--frames 4001 at 512x320", available=79 * GiB)
    message = str(exc.value)
    assert message.startswith("--frames 4001 at 512x320 needs about ") and "\n" not in message
    assert f"{need.total / GiB:.1f} GiB" in message and "cuda:0 has 79.0 GiB free" in message
    assert "fewer frames" in message and "--low-vram" in message and "another device" in message


def test_a_run_that_fits_passes_and_cpu_advice_names_ram():
    memory.check_fits(bf16_cuda(TOKENS_49), torch.device("cuda"), "x", available=80 * GiB)
    need = memory.estimate(URSA_1_7B, TOKENS_49, dtype=torch.float32, device_type="cpu")
    with pytest.raises(InputError, match=r"this machine has 4\.0 GiB of RAM available: .*--device cuda"):
        memory.check_fits(need, torch.device("cpu"), "x", available=4 * GiB)


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads /proc/meminfo")
def test_available_ram_is_read_from_meminfo():
    have = memory.available_bytes(torch.device("cpu"))
    assert have is not None and 0 < have <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_the_loader_options_change_the_weights_on_the_device():
    full, streamed = bf16_cuda(TOKENS_49), bf16_cuda(TOKENS_49, low_vram=True)
    kept = bf16_cuda(TOKENS_49, low_vram=True, blocks_on_gpu=20)
    per_layer = memory.layer_params(URSA_1_7B) * 2
    assert kept.weights - streamed.weights == 20 * per_layer          # resident blocks are counted
    assert bf16_cuda(TOKENS_49, low_vram=True, blocks_on_gpu=99).weights == full.weights
    fp8 = bf16_cuda(TOKENS_49, fp8_weights=True)
    assert full.weights - fp8.weights == URSA_1_7B.num_hidden_layers * per_layer // 2
    table = URSA_1_7B.vocab_size * URSA_1_7B.hidden_size * 2
    assert full.weights - bf16_cuda(TOKENS_49, embeddings_on_device=False).weights == table
