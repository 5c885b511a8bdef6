"""URSA inference in plain PyTorch: checkpoint loading, metric-path sampler with frame-wise clocks, tokenizers.

    from ursa_core import load_model, generate, FrameSchedule
    model = load_model("models/ursa/URSA-1.7B-FSQ320", device="cuda")
    tokens = generate(model, "a red fox in the snow", frames=49, motion=9.0)
    frames = decode_tokens(model, tokens)   # IMAGE-style [F, H, W, 3] in 0..1
"""
from .errors import CheckpointError, InputError, URSAError
from .generate import StepInfo, generate
from .headless import decode_tokens
from .checkpoint import URSAModel, load_model
from .schedule import FrameSchedule

__all__ = ["CheckpointError", "FrameSchedule", "InputError", "StepInfo", "URSAError", "URSAModel", "decode_tokens",
           "generate", "load_model"]
