"""Paint with a mask: URSAMaskSchedule (a MASK -> token start times over source tokens), URSAPadForOutpaint and
URSARepaintComposite."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ursa_core import rules
from ursa_core.errors import InputError
from ursa_core.visual_tokenizer.canvas import FILLS, pad_for_outpaint
from ursa_core.path.schedule import StartTimes
from ursa_core.sampling.preview import start_map_diagram
from ursa_core.sampling.repaint import composite_repaint, mask_schedule

from .types import URSASchedule, URSATokens
from .widgets import float_input


def strides(identity, what: str) -> tuple[int, int]:
    """(temporal, spatial) stride of the tokenizer that made tokens, from their identity."""
    if not identity:
        raise InputError(f"{what} carry no tokenizer identity (an old token file?): encode the source again with URSA "
                         f"Tokenizer Encode, or save it again with URSA Save Tokens")
    return int(identity["temporal_stride"]), int(identity["spatial_stride"])


class URSAMaskSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSAMaskSchedule", display_name="URSA Mask Schedule (inpaint / re-roll)",
            category="URSA/conditioning",
            description="Repaints the masked part of a picture or clip with the same model: inpainting, outpainting "
                        "(after URSA Pad for Outpaint) and re-rolling a region. Every token gets a start time from "
                        "the mask: unmasked tokens are held exactly, masked ones are regenerated (strength 1) or "
                        "re-noised part way (strength below 1) and refined. A token is repainted if any of its "
                        "pixels is. The preview shows the token map (black = regenerated, amber = re-noised, "
                        "green = held).",
            inputs=[
                URSATokens.Input("source_tokens",
                                 tooltip="The whole canvas: URSA Tokenizer Encode of the image or video (after URSA "
                                         "Pad for Outpaint to outpaint), a sampler's tokens or URSA Load Tokens."),
                io.Mask.Input("mask", tooltip="White (1) = repaint. One mask for every frame, or one per frame. Drawn "
                                              "on the image that was encoded (LoadImage's mask editor) or at the "
                                              "canvas size; another size is resized (nearest, with a warning)."),
                float_input("strength", 1.0, *rules.UNIT_RANGE, step=0.01,
                            tooltip="1 = the masked region is generated anew; 0.5 = re-rolled half way (keeps layout "
                                    "and colours); 0 = kept. Soft mask values scale it."),
                io.Int.Input("grow", default=0, min=0, max=rules.MAX_GROW,
                             tooltip="Widen the repainted region by this many tokens (8 px for FSQ, 16 px for IBQ) "
                                     "so the new content blends into its surroundings."),
                URSASchedule.Input("keyframes", optional=True,
                                   tooltip="A URSA Frame Schedule to combine: its given frames are kept as well (a "
                                           "token starts at the later of its two start times)."),
            ],
            outputs=[URSASchedule.Output(display_name="schedule",
                                         tooltip="Per-token start times and the source tokens: connect to URSA "
                                                 "Sampler's schedule (it makes the source's frames at its size) and "
                                                 "to URSA Repaint Composite.")],
        )

    @classmethod
    def execute(cls, source_tokens, mask, strength, grow, keyframes=None) -> io.NodeOutput:
        temporal, spatial = strides(source_tokens.identity, "the source tokens")
        scheduled = mask_schedule(source_tokens.tokens, mask, temporal, spatial, strength=strength, grow=grow,
                                  fit=source_tokens.source_fit, keyframes=keyframes,
                                  identity=source_tokens.identity)
        return io.NodeOutput(scheduled, ui=ui.PreviewImage(start_map_diagram(scheduled.schedule), cls=cls))


class URSAPadForOutpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSAPadForOutpaint", display_name="URSA Pad for Outpaint", category="URSA/conditioning",
            description="Extends an image or video by the given pixels on each side and makes the matching mask "
                        "(1 on the added pixels), for URSA Tokenizer Encode and URSA Mask Schedule. The added "
                        "pixels are regenerated, so their fill only matters at the seam: 'edge' repeats the border "
                        "(the encoder sees a continuation of the picture), 'gray' is core's 0.5.",
            inputs=[
                io.Image.Input("image", tooltip="IMAGE [frames, H, W, C]."),
                *(io.Int.Input(side, default=0, min=0, max=rules.MAX_SIZE, step=8,
                               tooltip=f"Pixels added on the {side}. Encode the padded image at its new size (width "
                                       f"and height are multiples of 8 for FSQ, 16 for IBQ).")
                  for side in ("left", "top", "right", "bottom")),
                io.Combo.Input("fill", options=list(FILLS), default="edge",
                               tooltip="What the added pixels hold before they are repainted."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The padded image: encode it as the canvas."),
                     io.Mask.Output(display_name="mask", tooltip="1 on the added pixels: URSA Mask Schedule's mask.")],
        )

    @classmethod
    def execute(cls, image, left, top, right, bottom, fill) -> io.NodeOutput:
        return io.NodeOutput(*pad_for_outpaint(image, left, right, top, bottom, fill))


class URSARepaintComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSARepaintComposite", display_name="URSA Repaint Composite", category="URSA/conditioning",
            description="Pastes the repainted region onto the source pixels: outside the repainted tokens the "
                        "output is the source exactly, inside it is the decoded repaint, blended over 'feather' "
                        "pixels beyond them. Why: decoding changes every pixel a little (the tokenizer is lossy) "
                        "and its receptive field reaches past a token, so pixels next to a repainted token differ "
                        "from the source too.",
            inputs=[
                io.Image.Input("source", tooltip="The pixels that were encoded as the canvas (after URSA Pad for "
                                                 "Outpaint when outpainting), at any size: fit like the encoder did."),
                io.Image.Input("repainted", tooltip="URSA Tokenizer Decode of the repainted tokens."),
                URSASchedule.Input("schedule", tooltip="The URSA Mask Schedule that made them."),
                io.Int.Input("feather", default=16, min=0, max=rules.MAX_FEATHER,
                             tooltip="Pixels over which the repaint fades into the source outside the repainted "
                                     "tokens (0 = a hard edge on the token grid)."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The source with the repainted region.")],
        )

    @classmethod
    def execute(cls, source, repainted, schedule, feather) -> io.NodeOutput:
        if not isinstance(schedule.schedule, StartTimes):
            raise InputError("URSA Repaint Composite needs the schedule of a URSA Mask Schedule (a frame schedule "
                             "repaints whole frames)")
        temporal, spatial = strides(schedule.identity, "the schedule's source tokens")
        return io.NodeOutput(composite_repaint(source, repainted, schedule, temporal, spatial, feather))
