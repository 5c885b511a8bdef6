"""Widgets several nodes share, written once (as core's node_helpers): same names, ranges and tooltips, read from
ursa_core.rules."""
from __future__ import annotations

from comfy_api.latest import io

from ursa_core import rules


MODEL_DEFAULT = 0  # a sampler widget at 0 follows the model (checkpoint/defaults.py), as c/alpha/shift at 0 do
MODEL_SIZES = "0 = the model's default (512x320 FSQ320, 1024 IBQ1024, 512 IBQ512). "


def size_inputs(width: int = 512, height: int = 320, follows_model: bool = False) -> list:
    """Width and height, as the sampler and the tokenizer encoder name them; with `follows_model`, 0 (the
    default) is the model's size."""
    stride = rules.MIN_SIZE_STRIDE
    low, note = (MODEL_DEFAULT, MODEL_SIZES) if follows_model else (stride, "")
    if follows_model:
        width = height = MODEL_DEFAULT
    return [
        io.Int.Input("width", default=width, min=low, max=rules.MAX_SIZE, step=stride,
                     tooltip=note + "Pixel width; a multiple of the tokenizer stride (8 for FSQ320, 16 for IBQ)."),
        io.Int.Input("height", default=height, min=low, max=rules.MAX_SIZE, step=stride,
                     tooltip=note + "Pixel height; a multiple of the tokenizer stride (8 for FSQ320, 16 for IBQ)."),
    ]


def sampling_inputs(steps: int = 25, follows_model: bool = False) -> list:
    """The widgets shared by the sampler and the extender (same names, ranges and tooltips); with
    `follows_model`, steps 0 (the default) is the model's."""
    low = MODEL_DEFAULT if follows_model else 1
    note = "0 = the model's default (or the preset's). " if follows_model else ""
    return [
        io.Int.Input("seed", default=0, min=0, max=rules.SEED_MAX, control_after_generate=True,
                     tooltip="Same seed + same settings = same tokens on the same device."),
        io.Int.Input("steps", default=low if follows_model else steps, min=low, max=rules.MAX_STEPS,
                     tooltip=note + "Sampling steps. URSA uses 25 for images and 50 for videos."),
        io.Float.Input("cfg", default=7.0, min=rules.GUIDANCE_RANGE[0], max=rules.GUIDANCE_RANGE[1], step=0.1,
                       round=0.01,
                       tooltip="Classifier-free guidance scale in logit space (URSA default 7). <= 1 runs one "
                               "branch only (faster, no negative prompt)."),
        io.Float.Input("guidance_trunc", default=0.9, min=0.0, max=1.0, step=0.01,
                       tooltip="Guidance is applied while the clock t < this; later steps run the conditional "
                               "branch only (same result as the reference, half the work)."),
    ]


def path_inputs() -> list:
    """The metric path's c, alpha and shift (0 = the checkpoint's value)."""
    return [
        io.Float.Input("c", default=0.0, min=0.0, max=rules.PATH_MAX["c"], step=0.1,
                       tooltip="Metric path scale c in beta_t = c (t/(1-t))^alpha. 0 = the checkpoint's value."),
        io.Float.Input("alpha", default=0.0, min=0.0, max=rules.PATH_MAX["alpha"], step=0.05,
                       tooltip="Metric path exponent alpha. 0 = the checkpoint's value."),
        io.Float.Input("shift", default=0.0, min=0.0, max=rules.PATH_MAX["shift"], step=0.1,
                       tooltip="Time shift lambda (> 1 spends more steps at high noise). 0 = the checkpoint's "
                               "value."),
    ]
