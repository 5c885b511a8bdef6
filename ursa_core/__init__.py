"""URSA inference in plain PyTorch: checkpoint loading, metric-path sampler with frame-wise clocks, tokenizers.

    import ursa_core
    model = ursa_core.load_model("models/ursa/URSA-1.7B-FSQ320", device="cuda")
    tokens = ursa_core.generate(model, "a red fox in the snow", frames=49, motion=9.0)
    frames = ursa_core.decode_tokens(model, tokens)   # IMAGE-style [F, H, W, 3] in 0..1
    ursa_core.write_frames(frames, "out/fox.mp4", fps=model.geometry.fps)
"""
__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

from .codec import decode_tokens
from .errors import CheckpointError, InputError, OutputError, URSAError
from .generate import StepInfo, generate
from .media import write_frames
from .model import URSAModel, load_model
from .schedule import FrameSchedule

__all__ = ["CheckpointError", "FrameSchedule", "InputError", "OutputError", "StepInfo", "URSAError", "URSAModel",
           "__version__", "decode_tokens", "generate", "load_model", "write_frames"]
