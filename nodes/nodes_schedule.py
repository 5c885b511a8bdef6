"""URSAFrameSchedule: which latent frames are given and how noised (frame-wise clocks) -> URSA_SCHEDULE."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ursa_core import rules
from ursa_core.errors import InputError
from ursa_core.path.schedule import MODE_ONLY_INPUTS, SCHEDULE_MODES, build_schedule
from ursa_core.sampling.preview import schedule_diagram

from .types import URSASchedule, URSATokens
from .widgets import float_input

MODES_OPTION = "ursa_modes"  # read by web/js/ursa.js (shows the input in these modes only) and make_workflows.py


def shown_in_modes(name: str) -> dict:
    return {MODES_OPTION: list(MODE_ONLY_INPUTS[name])}


def check_something_to_make(mode: str, frames: int, start_time: float, schedule) -> None:
    """An interpolation that holds every latent frame (5 frames are its first and last) makes nothing: a mistake.
    Without hold nothing is held and every frame is made."""
    if mode == "interpolation" and len(schedule.held()) == schedule.num_frames:
        raise InputError(f"frames={frames} with mode='interpolation' and start_time={start_time:g} holds every "
                         f"latent frame (the first and the last are all there is): use 9 frames or more, or a "
                         f"start_time below 1")


class URSAFrameSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSAFrameSchedule", display_name="URSA Frame Schedule (timestep mask)",
            category="URSA/conditioning",
            description="Gives every latent frame its own start time: 0 = generated from noise, 1 = a given frame "
                        "held exactly, in between = a given frame noised to that time that keeps refining. "
                        "Image-to-video, interpolation, extension and keyframes are all schedules. The preview "
                        "shows one column per latent frame (black = generated, green = held, amber = noised).",
            inputs=[
                io.Combo.Input("mode", options=list(SCHEDULE_MODES), default="image-to-video",
                               tooltip="Which frames are given: image-to-video = the first; interpolation = first "
                                       "and last; extension = the first given_frames (from the end of "
                                       "start_tokens); custom keyframes = the 'keyframes' list."),
                io.Int.Input("frames", default=49, min=1, max=rules.MAX_FRAMES, step=4,
                             tooltip="Pixel frames of the clip, 1 + 4k. The sampler makes this many (its own "
                                     "frames widget is for text-only runs)."),
                float_input("start_time", 1.0, *rules.UNIT_RANGE, step=0.01,
                            tooltip="Start time of the given frames: 1.0 = kept exactly; 0.9 = lightly noised so "
                                    "they can adapt (the reference's cond_noise_scale 0.1)."),
                io.Int.Input("given_frames", default=4, min=1, max=rules.MAX_CARRIED,
                             extra_dict=shown_in_modes("given_frames"),
                             tooltip="extension only (shown in that mode): how many latent frames are carried "
                                     "over (4 latent frames = 13 pixel frames, as the URSA extension loop)."),
                io.String.Input("keyframes", default="0:1.0, -1:1.0", extra_dict=shown_in_modes("keyframes"),
                                tooltip="custom keyframes only (shown in that mode): 'latent_index:start_time' "
                                        "pairs, comma separated; negative indices count from the end (-1 = last "
                                        "latent frame)."),
                URSATokens.Input("start_tokens", optional=True,
                                 tooltip="Tokens of the first image (image-to-video, interpolation), the clip to "
                                         "continue (extension) or the keyframes (custom)."),
                URSATokens.Input("end_tokens", optional=True,
                                 tooltip="interpolation only: tokens of the last image."),
                io.Boolean.Input("hold", default=True, optional=True,
                                 tooltip="On: frames with start time 1 are never resampled. Off: the reference "
                                         "pipeline's behaviour (given frames only initialise the clip, every frame "
                                         "follows one clock and the last step re-samples them)."),
            ],
            outputs=[URSASchedule.Output(display_name="schedule", tooltip="Per-latent-frame start times and the given "
                                                                          "frames' tokens: connect to URSA Sampler's "
                                                                          "schedule input.")],
        )

    @classmethod
    def validate_inputs(cls, frames=None):
        # Only frames: ComfyUI files the answer under every input named here (see widgets.py); mode and start_time
        # are core's checks, and the rule tying mode, frames, start_time and hold is checked when the node runs.
        return frames is None or rules.first_problem(lambda: rules.frames(frames))

    @classmethod
    def execute(cls, mode, frames, start_time, given_frames, keyframes, start_tokens=None, end_tokens=None,
                hold=True) -> io.NodeOutput:
        scheduled = build_schedule(mode, rules.latent_frames(frames), start_time=start_time, given_frames=given_frames,
                                   keyframes=keyframes, hold=hold,
                                   start_tokens=None if start_tokens is None else start_tokens.tokens,
                                   end_tokens=None if end_tokens is None else end_tokens.tokens)
        check_something_to_make(mode, frames, start_time, scheduled.schedule)
        return io.NodeOutput(scheduled, ui=ui.PreviewImage(schedule_diagram(scheduled.schedule), cls=cls))
