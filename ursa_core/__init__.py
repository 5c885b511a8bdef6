"""URSA inference in plain PyTorch: checkpoint loading, metric-path sampler with frame-wise clocks, tokenizers.

The library surface (docs/ARCHITECTURE.md describes the pieces):

    import ursa_core as ursa
    model = ursa.load("models/ursa/URSA-1.7B-FSQ320", device="cuda", attention="auto")
    run = ursa.generate(model, "a red fox in the snow", frames=49, motion=9.0, seed=7)
    run.tokens, run.initial_tokens, run.seed, run.settings      # what came out, where it started, how
    settings = ursa.GenerationSettings(frames=49, motion=9.0, seed=7)   # the same run as one typed object
    run = ursa.generate(model, "a red fox in the snow", settings=settings)
    fast = ursa.with_speed(model, ursa.SpeedOptions(compile=True, low_vram="stream", blocks_on_gpu=8),
                           ursa.Placement.single("cuda"))      # a handle; `model` stays as loaded
    frames = ursa.decode_tokens(model, run.tokens)             # IMAGE-style [F, H, W, 3] in 0..1
    ursa.write_frames(frames, "out/fox.mp4", fps=model.geometry.fps)   # atomic: complete or not at all

    # one transformer pass as the sampler runs it, with every layer's hidden states (as transformers)
    ids = model.prompts.encode(["a red fox"])                    # [1, max_prompt_length]
    out = model(ursa.build_sequence(model, ids, run.tokens), output_hidden_states=True)
    out.logits, out.hidden_states

    # the metric path: beta_t, its derivative, the kinetic-optimal velocity, the time shift of the grid
    ursa.beta(t, c, alpha); ursa.beta_dot(t, c, alpha); ursa.velocity(model.path, x_t, x1, t)
    ursa.time_shift(t, shift); ursa.time_grid(steps, shift)
"""
__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

from .checkpoint.loader import URSAModel
from .checkpoint.loader import load_model as load
from .errors import CheckpointError, InputError, OutputError, URSAError
from .files.media import write_frames
from .model.modeling_ursa import TransformerOutput
from .model.sequence import ModelInput, build_sequence
from .path.metric_path import MetricPath, beta, beta_dot, velocity
from .path.schedule import FrameClocks, FrameSchedule, StartTimes, build_schedule, time_grid, time_shift
from .runtime.speed import Placement, SpeedOptions, with_speed
from .sampling.extend import WindowPlan, extend_clip
from .sampling.generate import Generation, StepInfo, generate
from .sampling.settings import GenerationSettings
from .visual_tokenizer.codec import decode_tokens

__all__ = ["CheckpointError", "FrameClocks", "FrameSchedule", "Generation", "GenerationSettings", "InputError",
           "MetricPath", "ModelInput", "OutputError", "Placement", "SpeedOptions", "StartTimes", "StepInfo",
           "TransformerOutput", "URSAError", "URSAModel", "WindowPlan", "__version__", "beta", "beta_dot",
           "build_schedule", "build_sequence", "decode_tokens", "extend_clip", "generate", "load", "time_grid",
           "time_shift", "velocity", "with_speed", "write_frames"]
