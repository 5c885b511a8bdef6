"""Attention backends for the bidirectional URSA stack, registered by name and looked up where attention runs.

As transformers' ALL_ATTENTION_FUNCTIONS: each `Attention` module holds the name of its backend
(`attn_implementation`) and calls `attention_function(name)(q, k, v)`, so no layer loop carries a function.
Every backend takes q [B, Hq, S, D], k/v [B, Hkv, S, D] (grouped KV heads) and returns [B, Hq, S, D]; none uses a
mask. A backend registers with an availability check (device, installed package); `auto` resolves to the first
available name of AUTO_ORDER when a model is set up, and says which.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger(__name__)
AttentionFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    build: Callable[[], AttentionFunction]   # called once, on first use (imports, compiles)
    available: Callable[[torch.device], bool]
    summary: str
    # Whether a CUDA graph captures its launches (runtime/graphs.py). SageAttention's extensions do not: measured on
    # an H200, a captured guided step replayed in 0.30 s instead of 1.1 s, its attention left out.
    capturable: bool = True


_REGISTRY: dict[str, AttentionBackend] = {}
_BUILT: dict[str, AttentionFunction] = {}
# Fastest first, as measured on an H100 at the 49-frame shape (docs/PERFORMANCE.md): FlashAttention-4 ~700
# TFLOP/s, cuDNN through SDPA ~580. The SageAttention kernels quantise (8-bit: approximate attention), so they run
# only when named: `sage` (v1, 446 TFLOP/s, 1.3 % error) and `sage2` (v2's SM90 kernel, ~830, 4-5 %).
AUTO_ORDER = ["flash4", "sdpa"]


def register(name: str, build: Callable[[], AttentionFunction], available: Callable[[torch.device], bool],
             summary: str, capturable: bool = True) -> None:
    """Add (or replace) a backend. `available(device)` must be cheap and must not raise."""
    _REGISTRY[name] = AttentionBackend(name, build, available, summary, capturable)
    _BUILT.pop(name, None)


def is_capturable(name: str) -> bool:
    """Whether steps running backend `name` may be captured as CUDA graphs."""
    return name in _REGISTRY and _REGISTRY[name].capturable


def names() -> tuple[str, ...]:
    """Every name a user may choose: "auto" and the registered backends."""
    return ("auto", *_REGISTRY)


def is_available(name: str, device: str | torch.device) -> bool:
    backend = _REGISTRY.get(name)
    return backend is not None and backend.available(torch.device(device))


def summary(name: str) -> str:
    """One line on what `name` is and where it runs (for help texts and error messages)."""
    return _REGISTRY[name].summary if name in _REGISTRY else "unknown backend"


def available_names(device: str | torch.device) -> tuple[str, ...]:
    return ("auto", *(name for name in _REGISTRY if is_available(name, device)))


def resolve(name: str, device: str | torch.device) -> str:
    """The backend `name` stands for on `device` ("auto" -> the first available of AUTO_ORDER); one line of
    InputError for an unknown name or one this device / installation cannot run."""
    device = torch.device(device)
    if name == "auto":
        picked = next(n for n in AUTO_ORDER if is_available(n, device))
        log.info("attention auto -> %s on %s (%s)", picked, device, _REGISTRY[picked].summary)
        return picked
    if name not in _REGISTRY:
        raise InputError(f"attention backend {name!r} is not one of {names()}")
    if not is_available(name, device):
        raise InputError(f"attention backend {name!r} is not available on {device} "
                         f"({_REGISTRY[name].summary}); available: {available_names(device)}")
    return name


def attention_function(name: str) -> AttentionFunction:
    """The kernel registered as `name` (built on first use)."""
    if name not in _BUILT:
        if name not in _REGISTRY:
            raise InputError(f"attention backend {name!r} is not one of {names()}")
        _BUILT[name] = _REGISTRY[name].build()
    return _BUILT[name]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA, PyTorch picks the kernel (cuDNN on H100): full bidirectional attention, grouped KV heads."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=q.shape[1] != k.shape[1])


def _expand_kv(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    groups = q.shape[1] // kv.shape[1]
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


def _sdpa_pinned(kind: str) -> Callable[[], AttentionFunction]:
    def build() -> AttentionFunction:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = getattr(SDPBackend, kind)

        def attend(q, k, v):
            with sdpa_kernel([backend]):
                # Not every backend takes enable_gqa; expanding KV heads is exact and cheap next to attention.
                return F.scaled_dot_product_attention(q, _expand_kv(q, k), _expand_kv(q, v))
        return attend
    return build


def _flex() -> AttentionFunction:
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)

    def attend(q, k, v):
        return compiled(q, k, v, enable_gqa=q.shape[1] != k.shape[1])
    return attend


def _cuda(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


def _installed(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


HALF = (torch.float16, torch.bfloat16)


def _has_flash4(device: torch.device) -> bool:
    """FlashAttention-4 (CuTe-DSL kernels) exists for Hopper (SM90) and Blackwell (SM100) only."""
    return _cuda(device) and torch.cuda.get_device_capability(device)[0] in (9, 10) and _installed("flash_attn.cute")


def _flash4() -> AttentionFunction:
    from flash_attn.cute import flash_attn_func

    def attend(q, k, v):
        if q.dtype not in HALF:  # FA4 has half-precision kernels only; fp32 runs (tests, CPU dtypes) use SDPA
            return sdpa(q, k, v)
        # FA4 takes [B, S, H, D]. The model's q/k/v are [B, S, H, D] tensors seen as [B, H, S, D] views (see
        # modeling_ursa.Attention.attend), so these transposes are free, and grouped KV heads are native.
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False)
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)
    return attend


def _has_sage(device: torch.device) -> bool:
    return _cuda(device) and _installed("sageattention")


def _sage() -> AttentionFunction:
    from sageattention import sageattn

    def attend(q, k, v):
        # NHD on the untransposed tensors (contiguous last dim); sage smooths k in place, so it gets its own copy.
        out = sageattn(q.transpose(1, 2), k.transpose(1, 2).clone(), v.transpose(1, 2), tensor_layout="NHD",
                       is_causal=False)
        return out.transpose(1, 2)
    return attend


def _sage2_extensions_built() -> bool:
    """Whether the installed sageattention package holds the two compiled SM90 modules the sage2 backend calls
    (scripts/sage2_build.sh builds exactly these); looked up as files, without importing the package."""
    import importlib.util
    from pathlib import Path
    try:
        spec = importlib.util.find_spec("sageattention")
    except (ImportError, ValueError):
        return False
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return any(all(any(Path(folder).glob(f"{module}*.so")) for module in ("_qattn_sm90", "_fused"))
               for folder in folders)


def _has_sage2(device: torch.device) -> bool:
    """SageAttention 2's kernel for Hopper (SM90) only; never picked by `auto` (8-bit: approximate attention)."""
    return _cuda(device) and torch.cuda.get_device_capability(device) == (9, 0) and _sage2_extensions_built()


def _sage2() -> AttentionFunction:
    from sageattention import sageattn_qk_int8_pv_fp8_cuda_sm90

    def attend(q, k, v):
        if q.dtype not in HALF:  # 8-bit kernels take fp16/bf16 inputs only
            return sdpa(q, k, v)
        # INT8 Q/K with per-warp scales after subtracting K's mean (smooth_k), FP8 P.V with fp32 accumulation: the
        # configuration measured in ../shared/spec/fp8-attention.md (833 TFLOP/s, 4-5 % error on the output). NHD
        # on the model's [B, S, H, D] tensors (the transposes are free views); grouped KV heads are native.
        out = sageattn_qk_int8_pv_fp8_cuda_sm90(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               tensor_layout="NHD", is_causal=False, qk_quant_gran="per_warp",
                                               pv_accum_dtype="fp32+fp32", smooth_k=True)
        return out.transpose(1, 2)
    return attend


def _has_flex(device: torch.device) -> bool:
    return _cuda(device) and _installed("torch.nn.attention.flex_attention")


register("sdpa", lambda: sdpa, lambda device: True, "PyTorch SDPA, kernel chosen by PyTorch")
register("cudnn", _sdpa_pinned("CUDNN_ATTENTION"), _cuda, "SDPA pinned to cuDNN; CUDA only")
register("flash", _sdpa_pinned("FLASH_ATTENTION"), _cuda, "SDPA pinned to FlashAttention-2; CUDA only")
register("efficient", _sdpa_pinned("EFFICIENT_ATTENTION"), _cuda, "SDPA pinned to memory-efficient; CUDA only")
register("math", _sdpa_pinned("MATH"), lambda device: True, "SDPA's reference math kernel")
register("flex", _flex, _has_flex, "FlexAttention (torch.compile); CUDA only")
register("flash4", _flash4, _has_flash4, "FlashAttention-4 (pip install .[hopper]); SM90/SM100 GPUs, fp16/bf16")
register("sage", _sage, _has_sage, "SageAttention's own dispatch (sageattn; v1: int8 QK in Triton, pip install "
         "sageattention); CUDA only", capturable=False)
register("sage2", _sage2, _has_sage2, "SageAttention 2 SM90 kernel (INT8 QK, FP8 PV: approximate; opt-in, built by "
         "scripts/sage2_build.sh); Hopper (SM90) GPUs, fp16/bf16", capturable=False)


def _ulysses() -> AttentionFunction:
    from .ulysses import attend
    return attend


def _ulysses_active(device: torch.device) -> bool:
    from .ulysses import is_active
    return is_active()


register("ulysses", _ulysses, _ulysses_active,
         "sequence parallel (Ulysses all-to-all) around the chosen kernel; set up by --parallel sp, not by hand")
