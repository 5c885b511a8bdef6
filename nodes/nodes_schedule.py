"""URSAFrameSchedule: which latent frames are given and how noised (frame-wise clocks) -> URSA_SCHEDULE."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ursa_core import rules
from ursa_core.path.schedule import SCHEDULE_MODES, build_schedule
from ursa_core.sampling.preview import schedule_diagram

from .types import URSASchedule, URSATokens

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
                             tooltip="Pixel frames of the clip, 1 + 4k; must equal the sampler's frames."),
                io.Float.Input("start_time", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Start time of the given frames: 1.0 = kept exactly; 0.9 = lightly "
                                       "noised so they can adapt (the reference's cond_noise_scale 0.1)."),
                io.Int.Input("given_frames", default=4, min=1, max=rules.MAX_CARRIED,
                             tooltip="extension only: how many latent frames are carried over (4 latent "
                                     "frames = 13 pixel frames, as the URSA extension loop)."),
                io.String.Input("keyframes", default="0:1.0, -1:1.0",
                                tooltip="custom keyframes only: 'latent_index:start_time' pairs, comma separated; "
                                        "negative indices count from the end (-1 = last latent frame)."),
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
    def validate_inputs(cls, frames=None, mode=None, start_time=None):
        # Naming these inputs turns off core's own checks for them, so their rules (ursa_core.rules) apply here.
        checked = rules.check_node_inputs(frames=frames, start_time=start_time)
        if checked is not True:
            return checked
        if mode is not None and mode not in SCHEDULE_MODES:
            return f"mode={mode!r} is not allowed: use one of {', '.join(SCHEDULE_MODES)}"
        if mode == "interpolation" and frames is not None and frames < 9 and (start_time is None or start_time >= 1):
            return (f"frames={frames} with interpolation holds every latent frame (first and last are all there "
                    f"is): use 9 frames or more, or a start_time below 1")
        return True

    @classmethod
    def execute(cls, mode, frames, start_time, given_frames, keyframes, start_tokens=None, end_tokens=None,
                hold=True) -> io.NodeOutput:
        scheduled = build_schedule(mode, rules.latent_frames(frames), start_time=start_time, given_frames=given_frames,
                                   keyframes=keyframes, hold=hold,
                                   start_tokens=None if start_tokens is None else start_tokens.tokens,
                                   end_tokens=None if end_tokens is None else end_tokens.tokens)
        return io.NodeOutput(scheduled, ui=ui.PreviewImage(schedule_diagram(scheduled.schedule), cls=cls))
