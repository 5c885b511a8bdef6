"""Widgets several nodes share, written once (as core's node_helpers): same names, ranges and tooltips, read from
ursa_core.rules."""
from __future__ import annotations

from comfy_api.latest import io

from ursa_core import rules


def size_inputs(width: int = 512, height: int = 320) -> list:
    """Width and height, as the sampler and the tokenizer encoder name them."""
    stride = rules.MIN_SIZE_STRIDE
    return [
        io.Int.Input("width", default=width, min=stride, max=rules.MAX_SIZE, step=stride,
                     tooltip="Pixel width; a multiple of the tokenizer stride (8 for FSQ320, 16 for IBQ1024)."),
        io.Int.Input("height", default=height, min=stride, max=rules.MAX_SIZE, step=stride,
                     tooltip="Pixel height; a multiple of the tokenizer stride (8 for FSQ320, 16 for IBQ1024)."),
    ]


def sampling_inputs(steps: int = 25) -> list:
    """The widgets shared by the sampler and the extender (same names, ranges and tooltips)."""
    return [
        io.Int.Input("seed", default=0, min=0, max=rules.SEED_MAX, control_after_generate=True,
                     tooltip="Same seed + same settings = same tokens on the same device."),
        io.Int.Input("steps", default=steps, min=1, max=rules.MAX_STEPS,
                     tooltip="Sampling steps. URSA uses 25 for images and 50 for videos."),
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
