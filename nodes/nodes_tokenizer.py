"""URSATokenizerEncode / URSATokenizerDecode: ComfyUI IMAGE batches <-> URSA_TOKENS through the visual tokenizer."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ursa_core.files.media import RESIZE_MODES
from ursa_core.files.token_io import TokenClip, check_identity
from ursa_core.visual_tokenizer.codec import decode_images, encode_images

from . import glue
from .types import URSATokens, URSAVQ
from .widgets import size_inputs


def encode_clip(vq_handle, images: torch.Tensor, width: int, height: int, resize_mode: str) -> TokenClip:
    frames = images.shape[0] if images.ndim == 4 else 1
    vq_handle.vq.latent_shape(frames, height, width)  # the tokenizer's rules, before its weights move
    return TokenClip(encode_images(vq_handle.to_compute_device(), images, width, height, resize_mode), vq_handle.fps,
                     vq_handle.identity)


class URSATokenizerEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSATokenizerEncode", display_name="URSA Tokenizer Encode", category="URSA/tokenizer",
            description="Encodes an IMAGE batch (one image, or video frames) into URSA visual tokens. Any input "
                        "size is resized to width x height; alpha is dropped. A batch of F frames must have "
                        "F = 1 + 4k for the video tokenizer (1 frame = one latent frame, for image-to-video).",
            inputs=[
                URSAVQ.Input("vq", tooltip="The visual tokenizer from URSA Model Loader."),
                io.Image.Input("image", tooltip="IMAGE batch [frames, H, W, C] in 0..1 (LoadImage, VHS, ...)."),
                *size_inputs(),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="crop",
                               tooltip="crop: scale to cover then centre-crop; pad: scale to fit then pad with "
                                       "black; stretch: resize ignoring aspect ratio."),
            ],
            outputs=[URSATokens.Output(display_name="tokens", tooltip="The image(s) as URSA visual tokens: connect to "
                                                                      "URSA Frame Schedule (given frames) or URSA "
                                                                      "Sampler's given_tokens.")],
        )

    @classmethod
    def execute(cls, vq, image, width, height, resize_mode) -> io.NodeOutput:
        return io.NodeOutput(encode_clip(vq, image, width, height, resize_mode))


def decode_clip(vq_handle, clip: TokenClip) -> torch.Tensor:
    check_identity(clip.identity, vq_handle.identity)
    progress = None

    def on_chunk(done: int, total: int) -> None:
        nonlocal progress
        progress = progress or glue.StepProgress(total)
        progress.advance()  # a progress update is also ComfyUI's cancel point
    return decode_images(vq_handle.to_compute_device(), clip.tokens, on_chunk)


class URSATokenizerDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSATokenizerDecode", display_name="URSA Tokenizer Decode", category="URSA/tokenizer",
            description="Decodes URSA tokens to an IMAGE batch (float32 [frames, H, W, 3] on the CPU) plus the "
                        "frame rate, ready for CreateVideo/SaveVideo, upscalers or VHS. Long clips are decoded in "
                        "temporal chunks when they do not fit, with progress and cancel per chunk.",
            inputs=[
                URSAVQ.Input("vq", tooltip="The visual tokenizer from URSA Model Loader."),
                URSATokens.Input("tokens", tooltip="From URSA Sampler, URSA Extend Video or URSA Load Tokens."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="Decoded frames, float32 [frames, H, W, 3] in "
                                                                    "0..1 on the CPU: for CreateVideo/SaveVideo, "
                                                                    "SaveImage, upscalers or VHS."),
                     io.Float.Output(display_name="fps", tooltip="The model's frame rate (12 for URSA).")],
        )

    @classmethod
    def execute(cls, vq, tokens) -> io.NodeOutput:
        return io.NodeOutput(decode_clip(vq, tokens), float(tokens.fps))
