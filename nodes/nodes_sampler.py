"""URSASampler: metric-path discrete diffusion sampling -> URSA_TOKENS."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ursa_core import rules
from ursa_core.checkpoint.defaults import PRESETS, check_preset, resolve
from ursa_core.errors import InputError
from ursa_core.files.token_io import TokenClip, check_identity, model_identity
from ursa_core.parallel.devices import generate_samples
from ursa_core.path.schedule import StartTimes, as_start_times
from ursa_core.sampling.generate import StepInfo, sampling_memory
from ursa_core.sampling.settings import GenerationSettings

from . import glue
from .types import URSACond, URSAModel, URSASchedule, URSATokens
from .widgets import path_inputs, sampling_inputs, size_inputs

GIVEN_WINS = ("For text-only runs: with a Frame or Mask Schedule or given_tokens connected, the clip takes their "
              "frame count and size (shown on the node after a run).")
log = logging.getLogger(__name__)


def checkpoint_default(value: float):
    return None if value <= 0 else value


@dataclass(frozen=True)
class ClipSize:
    """What the sampler makes, in pixels, and what set it ("" = its own widgets)."""
    frames: int
    width: int
    height: int
    source: str = ""

    def describe(self, frames: int, width: int, height: int) -> str:
        """The line shown on the node; says when the widgets (given here) are not what was used."""
        line = f"{self.width}×{self.height} px, {self.frames} frame{'s' * (self.frames != 1)}"
        if (self.frames, self.width, self.height) == (frames, width, height):
            return line
        return (f"{line} from {self.source} (wins over this node's {width}×{height}, {frames} frame"
                f"{'s' * (frames != 1)}, which are for text-only runs)")


def clip_size(geometry, frames: int, width: int, height: int, scheduled=None, given_tokens=None) -> ClipSize:
    """The tokens the sampler is given set the clip, as core's video nodes read a latent's size: the Frame
    Schedule's frame count and tokens, else given_tokens' size. Its own widgets set what nothing given sets."""
    stride = geometry.spatial_stride
    spatial, spatial_from = None, ""
    schedule_name = "the Mask Schedule" if isinstance(getattr(scheduled, "schedule", None), StartTimes) \
        else "the Frame Schedule"
    if scheduled is not None and scheduled.given is not None:
        spatial, spatial_from = tuple(scheduled.given.shape[2:]), schedule_name
    if given_tokens is not None:
        spatial = _given_size(given_tokens.shape, spatial, stride, schedule_name)
        spatial_from = spatial_from or "given_tokens"
    if scheduled is not None:
        latent_frames, frames_from = scheduled.schedule.latent_shape[0] \
            if isinstance(scheduled.schedule, StartTimes) else scheduled.schedule.num_frames, schedule_name
    else:
        latent_frames, frames_from = rules.latent_frames(frames, geometry.temporal_stride), ""
    if given_tokens is not None and given_tokens.shape[1] > latent_frames:
        raise InputError(f"given_tokens have {given_tokens.shape[1]} latent frames but the clip has {latent_frames} "
                         f"(frames={geometry.pixel_frames(latent_frames)}, set by {frames_from or 'the sampler'}): "
                         f"use a longer clip or fewer given frames")
    if spatial is None:
        geometry.latent_shape(1, height, width)  # the widgets set the size: the model's stride applies to them
        spatial = (height // stride, width // stride)
    source = " and ".join(dict.fromkeys(s for s in (frames_from, spatial_from) if s))
    return ClipSize(geometry.pixel_frames(latent_frames), spatial[1] * stride, spatial[0] * stride, source)


def _given_size(shape, schedule_spatial, stride: int, schedule_name: str) -> tuple[int, int]:
    if len(shape) != 4:
        raise InputError(f"given_tokens must be [batch, latent frames, h, w], got {list(shape)}")
    spatial = tuple(shape[2:])
    if schedule_spatial is not None and spatial != schedule_spatial:
        raise InputError(f"given_tokens are {spatial[1] * stride}x{spatial[0] * stride} px but {schedule_name}'s "
                         f"tokens are {schedule_spatial[1] * stride}x{schedule_spatial[0] * stride} px: encode both "
                         f"at the same width and height")
    return spatial


def run_sampler(model, conditioning, settings: GenerationSettings, schedule=None, given_tokens=None,
                preview=False, node_id=None, preset: str = "none", filled: tuple = (), batch_size: int = 1) -> TokenClip:
    """`settings` hold the node's widgets (steps None: the model's default for the clip made); the clip takes its
    frame count and size from what it is given. `preset` and `filled` (the widgets left at 0) join the line shown on
    the node and the log. `batch_size` samples (sample i with seed + i) spread over the model's devices (URSA
    Devices; one without)."""
    core = model.model
    size = clip_size(core.geometry, settings.frames, settings.width, settings.height, schedule,  # before weights move
                     None if given_tokens is None else given_tokens.tokens)
    used = GenerationSettings.build(settings, frames=size.frames, width=size.width, height=size.height) \
        .with_model_defaults(core.identity.defaults)   # steps left at 0 follow the clip's frames, not the widget's
    latent_shape = used.latent_shape(core.geometry)
    sched, given = (None, None) if schedule is None else (schedule.schedule, schedule.given)
    if schedule is not None:
        check_identity(schedule.identity, model_identity(core), "the schedule's source tokens")
    if given_tokens is not None:
        check_identity(given_tokens.identity, model_identity(core), "given_tokens")
        given = _merge_given(given, given_tokens.tokens, latent_shape)
    prompt_ids = conditioning.ids_for(size.frames)
    if not bool(as_start_times(sched, latent_shape).held().all()):  # else the given tokens come back: no weights move
        need = sampling_memory(core, latent_shape, prompt_ids[0].shape[0], used.guidance, glue.compute_device())
        model.to_compute_device(memory_required=need.total)
    shown = f"{size.describe(settings.frames, settings.width, settings.height)} · {used_note(used, preset)}"
    log.info("URSA Sampler: %s, %s%s", core.identity.name, shown,
             f"; {', '.join(filled)} from the model's defaults" if filled else "")
    status = glue.NodeText(node_id, shown)
    progress = glue.StepProgress(used.steps * batch_size, core.path.unit if preview else None,
                                 pixel_scale=core.geometry.spatial_stride)
    compiling = model.first_compiled_run(latent_shape)
    status.show("compiling the layers for this size (first run)…" if compiling else None)

    def on_step(sample: int, info: StepInfo) -> None:
        if compiling and info.step == 0:
            status.show()
        progress.advance(info.predicted if preview else None)
    runs = generate_samples([handle.model for handle in model.handles], batch_size, used, strategy=model.strategy,
                            prompt_ids=prompt_ids, schedule=sched, given_tokens=given, callback=on_step)
    return TokenClip(torch.cat([run.tokens for run in runs]), core.geometry.fps, model_identity(core))


def used_note(used: GenerationSettings, preset: str) -> str:
    """The steps and cfg a run used, shown on the node after its clip."""
    return f"{used.steps} steps, cfg {used.guidance:g}" + (f" ({preset})" if preset != "none" else "")


def _merge_given(given, extra, latent_shape):
    """given_tokens fill the clip from frame 0 (a full clip, or its first frames), over the schedule's tokens."""
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
                        "interpolation, extension or keyframes, or a Mask Schedule to repaint part of a picture or "
                        "clip. Decode the tokens with URSA Tokenizer Decode.",
            inputs=[
                URSAModel.Input("model", tooltip="From URSA Model Loader (or URSA Devices: several GPUs)."),
                URSACond.Input("conditioning", tooltip="From URSA Text Encode."),
                *sampling_inputs(follows_model=True),
                io.Int.Input("frames", default=1, min=1, max=rules.MAX_FRAMES, step=4,
                             tooltip="Pixel frames: 1 = image, 1 + 4k for video (49 = 4 s at 12 fps). " + GIVEN_WINS),
                *size_inputs(note=GIVEN_WINS, follows_model=True),
                *path_inputs(),
                URSASchedule.Input("schedule", optional=True,
                                   tooltip="Start times and given tokens: frame-wise (URSA Frame Schedule) or "
                                           "token-wise (URSA Mask Schedule: inpaint, outpaint, re-roll). None = "
                                           "every frame from noise."),
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
                io.Int.Input("batch_size", default=1, min=1, max=rules.MAX_BATCH, optional=True,
                             tooltip="Samples to generate: sample i uses seed + i, so each equals a single run "
                                     "with that seed. With URSA Devices they spread over the GPUs."),
            ],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The generated visual tokens [batch, latent "
                                                                      "frames, h, w]: decode with URSA Tokenizer "
                                                                      "Decode (one IMAGE batch, samples in order), "
                                                                      "extend with URSA Extend Video or keep with "
                                                                      "URSA Save Tokens.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, frames=None):
        # Only frames: ComfyUI files the answer under every input named here (see widgets.py). Ranges, NaN and the
        # preset list are core's checks; the size's stride is the checkpoint's, checked when the sampler runs.
        return frames is None or rules.first_problem(lambda: rules.frames(frames))

    @classmethod
    def execute(cls, model, conditioning, seed, steps, cfg, guidance_trunc, frames, width, height, c, alpha,
                shift, schedule=None, given_tokens=None, preview=True, preset="none", batch_size=1) -> io.NodeOutput:
        settings, filled = node_settings(model.model, preset, frames=frames, width=width, height=height,
                                         steps=steps, cfg=cfg, seed=seed, guidance_trunc=guidance_trunc, c=c,
                                         alpha=alpha, shift=shift)
        clip = run_sampler(model, conditioning, settings, schedule, given_tokens, preview, cls.hidden.unique_id,
                           preset, filled, batch_size)
        return io.NodeOutput(clip)


def node_settings(core, preset: str, *, frames, width, height, steps, cfg, seed, guidance_trunc, c, alpha,
                  shift) -> tuple[GenerationSettings, tuple[str, ...]]:
    """The widgets as settings, and the names of those the model's defaults fill in: 0 for size is the model's
    size, a preset other than none replaces cfg (and steps left at 0). Steps still at 0 stay None: the model's
    default depends on the frames of the clip made, which a schedule or given_tokens set (run_sampler)."""
    steps = steps or PRESETS[check_preset(preset)].get("steps")
    used = resolve(core.identity.defaults, preset, frames=frames, width=width or None, height=height or None,
                   steps=steps, guidance=cfg if preset == "none" else None)
    settings = GenerationSettings(frames=used.frames, height=used.height, width=used.width, seed=seed,
                                  steps=steps, guidance=used.guidance, guidance_trunc=guidance_trunc,
                                  c=checkpoint_default(c), alpha=checkpoint_default(alpha),
                                  shift=checkpoint_default(shift))
    return settings, tuple(name for name in used.filled if name != "frames" and name not in PRESETS[preset])
