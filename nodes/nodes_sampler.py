"""URSASampler: metric-path discrete diffusion sampling -> URSA_TOKENS."""
from __future__ import annotations

from comfy_api.latest import io

from ursa_core.errors import InputError
from ursa_core.generate import StepInfo, generate
from ursa_core.token_io import TokenClip

from . import glue
from .nodes_schedule import MAX_FRAMES, check_video_frames
from .nodes_tokenizer import MAX_SIZE, size_inputs
from .types import URSACond, URSAModel, URSASchedule, URSATokens

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def sampling_inputs(steps: int = 25) -> list:
    """The widgets shared by the sampler and the extender (same names, ranges and tooltips)."""
    return [
        io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                     tooltip="Same seed + same settings = same tokens on the same device."),
        io.Int.Input("steps", default=steps, min=1, max=500,
                     tooltip="Sampling steps. URSA uses 25 for images and 50 for videos."),
        io.Float.Input("cfg", default=7.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale in logit space (URSA default 7). <= 1 runs one "
                               "branch only (faster, no negative prompt)."),
        io.Float.Input("guidance_trunc", default=0.9, min=0.0, max=1.0, step=0.01,
                       tooltip="Guidance is applied while the clock t < this; later steps run the conditional "
                               "branch only (same result as the reference, half the work)."),
    ]


def path_inputs() -> list:
    return [
        io.Float.Input("c", default=0.0, min=0.0, max=100.0, step=0.1,
                       tooltip="Metric path scale c in beta_t = c (t/(1-t))^alpha. 0 = the checkpoint's value."),
        io.Float.Input("alpha", default=0.0, min=0.0, max=10.0, step=0.05,
                       tooltip="Metric path exponent alpha. 0 = the checkpoint's value."),
        io.Float.Input("shift", default=0.0, min=0.0, max=20.0, step=0.1,
                       tooltip="Time shift lambda (> 1 spends more steps at high noise). 0 = the checkpoint's "
                               "value."),
    ]


def checkpoint_default(value: float):
    return None if value <= 0 else value


def check_size(name: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int) or not 8 <= value <= MAX_SIZE or value % 8:
        return f"{name}={value!r} is not allowed: use a multiple of 8 from 8 to {MAX_SIZE} (16 for IBQ models)"
    return None


def run_sampler(model, conditioning, frames, width, height, schedule=None, given_tokens=None, preview=False,
                **sampling) -> TokenClip:
    model.to_compute_device()
    core = model.model
    sched, given = (None, None) if schedule is None else (schedule.schedule, schedule.given)
    if given_tokens is not None:
        given = _merge_given(given, given_tokens.tokens, core.geometry.latent_shape(frames, height, width))
    progress = glue.StepProgress(sampling["steps"], core.path.unit if preview else None)

    def on_step(info: StepInfo) -> None:
        progress.advance(info.predicted if preview else None)
    tokens = generate(core, prompt_ids=conditioning.ids_for(frames), frames=frames, width=width, height=height,
                      schedule=sched, given_tokens=given, callback=on_step, **sampling)
    return TokenClip(tokens, core.geometry.fps)


def _merge_given(given, extra, latent_shape):
    """given_tokens fill the clip from frame 0 (a full clip, or its first frames), over the schedule's tokens."""
    if extra.ndim != 4 or extra.shape[1] > latent_shape[0] or tuple(extra.shape[2:]) != tuple(latent_shape[1:]):
        raise InputError(f"given_tokens {list(extra.shape)} do not fit the clip's latent shape {list(latent_shape)}")
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
                *sampling_inputs(),
                io.Int.Input("frames", default=1, min=1, max=MAX_FRAMES, step=4,
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
            ],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The generated visual tokens [1, latent frames, "
                                                                      "h, w]: decode with URSA Tokenizer Decode, "
                                                                      "extend with URSA Extend Video or keep with "
                                                                      "URSA Save Tokens.")],
        )

    @classmethod
    def validate_inputs(cls, frames=None, width=None, height=None):
        return check_video_frames(frames) or check_size("width", width) or check_size("height", height) or True

    @classmethod
    def execute(cls, model, conditioning, seed, steps, cfg, guidance_trunc, frames, width, height, c, alpha,
                shift, schedule=None, given_tokens=None, preview=True) -> io.NodeOutput:
        clip = run_sampler(model, conditioning, frames, width, height, schedule, given_tokens, preview,
                           seed=seed, steps=steps, guidance=cfg, guidance_trunc=guidance_trunc,
                           c=checkpoint_default(c), alpha=checkpoint_default(alpha),
                           shift=checkpoint_default(shift))
        return io.NodeOutput(clip)
