"""URSAExtendVideo: sliding-window extension of a token clip, carrying tokens (never re-encoding pixels)."""
from __future__ import annotations

from dataclasses import replace

from comfy_api.latest import io

from ursa_core import rules
from ursa_core.files.token_io import TokenClip, check_identity, model_identity
from ursa_core.parallel.devices import one_sample
from ursa_core.sampling.extend import WindowInfo, WindowPlan, extend_clip
from ursa_core.sampling.settings import GenerationSettings

from . import glue
from .types import URSACond, URSAModel, URSATokens
from .widgets import float_input, sampling_inputs


def run_extension(model, conditioning, tokens: TokenClip, windows, window_frames, overlap, carry_start,
                  window_prompts: str, settings: GenerationSettings) -> TokenClip:
    plan = WindowPlan(windows, rules.latent_frames(window_frames), overlap)
    plan.check()  # before the weights move to the compute device
    core = model.model
    check_identity(tokens.identity, model_identity(core), "the tokens to extend")  # before the weights move
    model.to_compute_device()
    progress = glue.StepProgress(windows * settings.steps)
    first, parallel = one_sample([handle.model for handle in model.handles], settings.max_branches == 2,
                                 model.strategy)

    def on_step(info: WindowInfo) -> None:
        progress.advance()
        if info.step.step + 1 == info.step.steps:
            glue.check_interrupt()  # cancel between windows too
    lines = [line for line in window_prompts.splitlines() if line.strip()] or [conditioning.prompt]
    clip = extend_clip(first, tokens.tokens, lines, plan, replace(settings, motion=conditioning.motion),
                       negative_prompt=conditioning.negative_prompt, carry_start=carry_start, callback=on_step,
                       parallel=parallel)
    return TokenClip(clip, tokens.fps, model_identity(core))


class URSAExtendVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSAExtendVideo", display_name="URSA Extend Video (sliding window)", category="URSA/video",
            description="Makes a clip longer window by window: each window re-uses the last `overlap` latent "
                        "frames of the clip as given frames and appends (window - overlap) new latent frames. "
                        "Tokens are carried over directly, so there is no decode/encode colour drift. Progress "
                        "covers every window; cancel works between steps and windows.",
            inputs=[
                URSAModel.Input("model", tooltip="From URSA Model Loader (or URSA Devices: each window's guidance "
                                          "branches on two GPUs)."),
                URSACond.Input("conditioning", tooltip="Prompt used for every window without its own line in "
                                                       "window_prompts."),
                URSATokens.Input("tokens", tooltip="The clip to extend (e.g. URSA Sampler output)."),
                io.Int.Input("windows", default=2, min=1, max=64,
                             tooltip="How many windows to add. Each adds (window_frames - 1)/4 + 1 - overlap "
                                     "latent frames = 4 pixel frames each."),
                io.Int.Input("window_frames", default=49, min=5, max=rules.MAX_FRAMES, step=4,
                             tooltip="Pixel frames per window (1 + 4k), 49 as the URSA extension loop."),
                io.Int.Input("overlap", default=4, min=1, max=rules.MAX_CARRIED,
                             tooltip="Latent frames carried from the end of the clip into each window (4 latent "
                                     "frames = 13 pixel frames, as URSA's loop)."),
                *sampling_inputs(steps=50),
                float_input("carry_start", 1.0, *rules.UNIT_RANGE, step=0.01,
                            tooltip="Start time of the carried frames: 1 = kept exactly; 0.9 = lightly noised so "
                                    "the seam can adapt (URSA's loop uses 0.9)."),
                io.String.Input("window_prompts", multiline=True, default="", optional=True,
                                tooltip="Optional: one prompt per line, line i for window i (the last line "
                                        "repeats). Empty = the conditioning's prompt for every window."),
            ],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The whole extended clip (input tokens followed "
                                                                      "by every new window's frames): decode with "
                                                                      "URSA Tokenizer Decode or save with URSA Save "
                                                                      "Tokens.")],
        )

    @classmethod
    def validate_inputs(cls, window_frames=None):
        # Only window_frames (see widgets.py); the overlap rule ties two inputs and is checked when the node runs.
        return window_frames is None or rules.first_problem(
            lambda: rules.frames(window_frames, name="window_frames", min_latents=2))

    @classmethod
    def execute(cls, model, conditioning, tokens, windows, window_frames, overlap, seed, steps, cfg,
                guidance_trunc, carry_start, window_prompts="") -> io.NodeOutput:
        settings = GenerationSettings(seed=seed, steps=steps, guidance=cfg, guidance_trunc=guidance_trunc)
        clip = run_extension(model, conditioning, tokens, windows, window_frames, overlap, carry_start,
                             window_prompts, settings)
        return io.NodeOutput(clip)
