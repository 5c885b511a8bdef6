"""URSATextEncode: prompt, negative prompt and motion score -> URSA_COND (token ids; URSA has no separate text
encoder, the transformer reads the prompt tokens itself)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ursa_core import rules

from .types import URSACond, URSAModel
from .widgets import float_input

DEFAULT_NEGATIVE = ""


@dataclass
class PromptConditioning:
    prompt: str
    negative_prompt: str
    motion: float | None
    video_ids: torch.Tensor   # [1, L] with the `motion=<score>, ` prefix (videos)
    image_ids: torch.Tensor   # [1, L] without it (single images, as the reference)
    negative_ids: torch.Tensor

    def ids_for(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.video_ids if frames > 1 else self.image_ids), self.negative_ids


def encode_prompt(model, prompt: str, negative_prompt: str, motion: float) -> PromptConditioning:
    motion_value = None if motion <= 0 else motion
    encoder = model.model.prompts
    return PromptConditioning(prompt, negative_prompt, motion_value, encoder.encode([prompt], motion_value),
                              encoder.encode([prompt]), encoder.encode([negative_prompt]))


class URSATextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSATextEncode", display_name="URSA Text Encode", category="URSA/conditioning",
            description="Tokenizes the prompt and negative prompt with the checkpoint's Qwen3 tokenizer (left-padded "
                        "to the model's prompt length). For videos the prompt gets URSA's 'motion=<score>, ' prefix.",
            inputs=[
                URSAModel.Input("model", tooltip="From URSA Model Loader (its tokenizer is used)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What to generate. Long prompts are truncated to the model's prompt "
                                        "length (320 tokens for the released checkpoints)."),
                io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE,
                                tooltip="Guidance pushes away from this. Empty (the default) is the model's "
                                        "unconditional prompt. The URSA demos use 'worst quality, low quality, "
                                        "inconsistent motion, static, still, blurry, jittery, distorted, ugly'."),
                float_input("motion_score", rules.DEFAULT_MOTION, *rules.MOTION_RANGE, step=0.5,
                            tooltip="Video only: how much motion (URSA demos: 9 for T2V/I2V, 5 for extension). 0 = "
                                    "no motion prefix. Ignored for single images."),
            ],
            outputs=[URSACond.Output(display_name="conditioning", tooltip="Prompt and negative prompt token ids (with "
                                                                          "and without the motion prefix): connect to "
                                                                          "URSA Sampler or URSA Extend Video.")],
        )

    @classmethod
    def execute(cls, model, prompt, negative_prompt, motion_score) -> io.NodeOutput:
        return io.NodeOutput(encode_prompt(model, prompt, negative_prompt, motion_score))
