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
import importlib

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

# Public name -> "module" or "module:attribute" (when the name differs). The names are imported on first use
# (PEP 562), so `import ursa_core` and the CLI's help need no torch; a module that moves changes one line here.
_PUBLIC = {
    "CheckpointError": "errors", "InputError": "errors", "OutputError": "errors", "URSAError": "errors",
    "URSAModel": "checkpoint.loader", "load": "checkpoint.loader:load_model",
    "load_image": "files.media", "write_frames": "files.media",
    "TransformerOutput": "model.modeling_ursa",
    "ModelInput": "model.sequence", "build_sequence": "model.sequence",
    "MetricPath": "path.metric_path", "beta": "path.metric_path", "beta_dot": "path.metric_path",
    "velocity": "path.metric_path",
    "FrameClocks": "path.schedule", "FrameSchedule": "path.schedule", "StartTimes": "path.schedule",
    "build_schedule": "path.schedule", "time_grid": "path.schedule", "time_shift": "path.schedule",
    "Placement": "runtime.speed", "SpeedOptions": "runtime.speed", "with_speed": "runtime.speed",
    "WindowPlan": "sampling.extend", "extend_clip": "sampling.extend",
    "Generation": "sampling.generate", "StepInfo": "sampling.generate", "generate": "sampling.generate",
    "GenerationSettings": "sampling.settings",
    "decode_tokens": "visual_tokenizer.codec",
}

__all__ = sorted(["__version__", *_PUBLIC])


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = _PUBLIC[name].partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attribute or name)
    globals()[name] = value   # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
