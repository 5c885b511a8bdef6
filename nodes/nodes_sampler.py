"""URSASampler: metric-path discrete diffusion sampling -> URSA_TOKENS."""
from __future__ import annotations

from comfy_api.latest import io

import logging

from ursa_core import rules
from ursa_core.checkpoint.defaults import PRESETS, check_preset, resolve
from ursa_core.errors import InputError
from ursa_core.files.token_io import TokenClip, check_identity, model_identity
from ursa_core.sampling.generate import StepInfo, generate, sampling_memory
from ursa_core.sampling.settings import GenerationSettings

from . import glue
from .types import URSACond, URSAModel, URSASchedule, URSATokens
from .widgets import path_inputs, sampling_inputs, size_inputs

log = logging.getLogger(__name__)


def checkpoint_default(value: float):
    return None if value <= 0 else value


def run_sampler(model, conditioning, settings: GenerationSettings, schedule=None, given_tokens=None,
                preview=False) -> TokenClip:
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
    progress = glue.StepProgress(settings.steps, core.path.unit if preview else None)

    def on_step(info: StepInfo) -> None:
        progress.advance(info.predicted if preview else None)
    tokens = generate(core, settings=settings, prompt_ids=prompt_ids, schedule=sched, given_tokens=given,
                      callback=on_step).tokens
    return TokenClip(tokens, core.geometry.fps, model_identity(core))


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
                URSAModel.Input("model", tooltip="From URSA Model Loader."),
                URSACond.Input("conditioning", tooltip="From URSA Text Encode."),
                *sampling_inputs(follows_model=True),
                io.Int.Input("frames", default=1, min=1, max=rules.MAX_FRAMES, step=4,
                             tooltip="Pixel frames: 1 = image, 1 + 4k for video (49 = 4 s at 12 fps)."),
                *size_inputs(follows_model=True),
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
                io.Combo.Input("preset", options=list(PRESETS), default="none", optional=True,
                               tooltip="none = the widgets as set. rl_tuned = how RL-tuned transformers (UDM-GRPO, "
                                       "loaded with the loader's transformer_weights) are sampled: cfg 1 (one "
                                       "branch, no negative prompt; the cfg widget is not used) and 25 steps "
                                       "unless steps is set (not 0)."),
            ],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The generated visual tokens [1, latent frames, "
                                                                      "h, w]: decode with URSA Tokenizer Decode, "
                                                                      "extend with URSA Extend Video or keep with "
                                                                      "URSA Save Tokens.")],
        )

    @classmethod
    def validate_inputs(cls, frames=None, width=None, height=None, steps=None, cfg=None, guidance_trunc=None, c=None,
                        alpha=None, shift=None, preset=None):
        if preset is not None and preset not in PRESETS:   # named here, so core's COMBO check is off: do it
            return rules.first_problem(lambda: check_preset(preset))
        return rules.check_node_inputs(frames=frames, sampler_width=width, sampler_height=height,
                                       sampler_steps=steps, cfg=cfg, guidance_trunc=guidance_trunc, c=c, alpha=alpha,
                                       shift=shift)

    @classmethod
    def execute(cls, model, conditioning, seed, steps, cfg, guidance_trunc, frames, width, height, c, alpha,
                shift, schedule=None, given_tokens=None, preview=True, preset="none") -> io.NodeOutput:
        settings = node_settings(model.model, preset, frames=frames, width=width, height=height, steps=steps,
                                 cfg=cfg, seed=seed, guidance_trunc=guidance_trunc, c=c, alpha=alpha, shift=shift)
        clip = run_sampler(model, conditioning, settings, schedule, given_tokens, preview)
        return io.NodeOutput(clip)


def node_settings(core, preset: str, *, frames, width, height, steps, cfg, seed, guidance_trunc, c, alpha,
                  shift) -> GenerationSettings:
    """The widgets as settings: 0 for size or steps is the model's default, a preset other than none replaces cfg
    (and steps left at 0); what was used is logged, as the CLI prints it."""
    used = resolve(core.identity.defaults, preset, frames=frames, width=width or None, height=height or None,
                   steps=steps or None, guidance=cfg if preset == "none" else None)
    filled = [name for name in used.filled if name != "frames"]
    log.info("URSA Sampler: %s; %d frame(s) %dx%d, %d steps, cfg %g%s", core.identity.name, used.frames, used.width,
             used.height, used.steps, used.guidance,
             f" ({', '.join(filled)} from the {'preset ' + preset if preset != 'none' else 'model'})" if filled
             else "")
    return GenerationSettings(frames=used.frames, height=used.height, width=used.width, seed=seed, steps=used.steps,
                              guidance=used.guidance, guidance_trunc=guidance_trunc, c=checkpoint_default(c),
                              alpha=checkpoint_default(alpha), shift=checkpoint_default(shift))
