"""URSASampler: metric-path discrete diffusion sampling -> URSA_TOKENS."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ursa_core import rules
from ursa_core.errors import InputError
from ursa_core.files.token_io import TokenClip, check_identity, model_identity
from ursa_core.parallel.devices import generate_samples
from ursa_core.sampling.generate import StepInfo, sampling_memory
from ursa_core.sampling.settings import GenerationSettings

from . import glue
from .types import URSACond, URSAModel, URSASchedule, URSATokens
from .widgets import path_inputs, sampling_inputs, size_inputs

def checkpoint_default(value: float):
    return None if value <= 0 else value


def run_sampler(model, conditioning, settings: GenerationSettings, schedule=None, given_tokens=None,
                preview=False, batch_size: int = 1) -> TokenClip:
    """`batch_size` samples (sample i with seed + i) over the model's devices (URSA Devices; one device without)."""
    core = model.model
    # the model's own strides, before any weight moves
    latent_shape = settings.latent_shape(core.geometry)
    sched, given = (None, None) if schedule is None else (schedule.schedule, schedule.given)
    if given_tokens is not None:
        check_identity(given_tokens.identity, model_identity(core), "given_tokens")
        given = _merge_given(given, given_tokens.tokens, latent_shape)
    prompt_ids = conditioning.ids_for(settings.frames)
    need = sampling_memory(core, latent_shape, prompt_ids[0].shape[0], settings.guidance, glue.compute_device())
    model.to_compute_device(memory_required=need.total)
    progress = glue.StepProgress(settings.steps * batch_size, core.path.unit if preview else None)

    def on_step(sample: int, info: StepInfo) -> None:
        progress.advance(info.predicted if preview else None)
    runs = generate_samples([handle.model for handle in model.handles], batch_size, settings, strategy=model.strategy,
                            prompt_ids=prompt_ids, schedule=sched, given_tokens=given, callback=on_step)
    return TokenClip(torch.cat([run.tokens for run in runs]), core.geometry.fps, model_identity(core))


def _merge_given(given, extra, latent_shape):
    """given_tokens fill the clip from frame 0 (a full clip, or its first frames), over the schedule's tokens."""
    if extra.ndim != 4:
        raise InputError(f"given_tokens must be [batch, latent frames, h, w], got {list(extra.shape)}")
    if tuple(extra.shape[2:]) != tuple(latent_shape[1:]):
        raise InputError(f"given_tokens are {extra.shape[3]}x{extra.shape[2]} latent tokens (w x h) but the sampler's "
                         f"width x height needs {latent_shape[2]}x{latent_shape[1]}: encode them at the sampler's "
                         f"size")
    if extra.shape[1] > latent_shape[0]:
        raise InputError(f"given_tokens have {extra.shape[1]} latent frames but the sampler's frames make "
                         f"{latent_shape[0]}: use a longer clip or fewer given frames")
    merged = extra.new_zeros(extra.shape[0], *latent_shape) if given is None else given.clone()
    merged[:, :extra.shape[1]] = extra
    return merged


class URSASampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSASampler", display_name="URSA Sampler (Metric Path)", category="URSA/sampling",
            description="Generates visual tokens by iterative refinement on URSA's metric probability path with a "
                        "discrete Euler (CTMC jump) solver. Connect a Frame Schedule for image-to-video, "
                        "interpolation, extension or keyframes. Decode the tokens with URSA Tokenizer Decode.",
            inputs=[
                URSAModel.Input("model", tooltip="From URSA Model Loader (or URSA Devices: several GPUs)."),
                URSACond.Input("conditioning", tooltip="From URSA Text Encode."),
                *sampling_inputs(),
                io.Int.Input("frames", default=1, min=1, max=rules.MAX_FRAMES, step=4,
                             tooltip="Pixel frames: 1 = image, 1 + 4k for video (49 = 4 s at 12 fps)."),
                *size_inputs(),
                *path_inputs(),
                URSASchedule.Input("schedule", optional=True,
                                   tooltip="Frame-wise start times and given frames (URSA Frame Schedule). "
                                           "None = every frame from noise."),
                URSATokens.Input("given_tokens", optional=True,
                                 tooltip="Tokens placed from frame 0 on (a whole clip, or its first frames) "
                                         "for the frames the schedule marks as given."),
                io.Boolean.Input("preview", default=True, optional=True,
                                 tooltip="Show a cheap colour preview of the predicted tokens of frame 0 at every "
                                         "step (no decoder run)."),
                io.Int.Input("batch_size", default=1, min=1, max=rules.MAX_BATCH, optional=True,
                             tooltip="Samples to generate: sample i uses seed + i, so each equals a single run "
                                     "with that seed. With URSA Devices they spread over the GPUs."),
            ],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The generated visual tokens [batch, latent "
                                                                      "frames, h, w]: decode with URSA Tokenizer "
                                                                      "Decode (one IMAGE batch, samples in order), "
                                                                      "extend with URSA Extend Video or keep with "
                                                                      "URSA Save Tokens.")],
        )

    @classmethod
    def validate_inputs(cls, frames=None, width=None, height=None, cfg=None, guidance_trunc=None, c=None, alpha=None,
                        shift=None, batch_size=None):
        return rules.check_node_inputs(frames=frames, width=width, height=height, cfg=cfg,
                                       guidance_trunc=guidance_trunc, c=c, alpha=alpha, shift=shift,
                                       batch_size=batch_size)

    @classmethod
    def execute(cls, model, conditioning, seed, steps, cfg, guidance_trunc, frames, width, height, c, alpha,
                shift, schedule=None, given_tokens=None, preview=True, batch_size=1) -> io.NodeOutput:
        settings = GenerationSettings(frames=frames, height=height, width=width, seed=seed, steps=steps,
                                      guidance=cfg, guidance_trunc=guidance_trunc, c=checkpoint_default(c),
                                      alpha=checkpoint_default(alpha), shift=checkpoint_default(shift))
        clip = run_sampler(model, conditioning, settings, schedule, given_tokens, preview, batch_size)
        return io.NodeOutput(clip)
