"""Widgets several nodes share, written once (as core's node_helpers): same names, ranges and tooltips, read from
ursa_core.rules; and number widgets whose limits ComfyUI itself checks, per input, NaN included.

ComfyUI files a `validate_inputs` message under every input the function names, and the function can read only the
inputs it names. So a node's `validate_inputs` names just the inputs of its one rule that core cannot check (frames
of 1 + 4k, a model folder); ranges are left to core's own per-input check, which reports each value on its own
widget. That check is `value < min` and `value > max`, and NaN (which an API prompt can send) compares False with
every number; the bounds below make both comparisons fail for NaN.
"""
from __future__ import annotations

import math

from comfy_api.latest import io

from ursa_core import rules


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


class NanRefusingBound(float):
    """A widget limit that counts NaN as out of range. Python asks the right operand first when its type subclasses
    the left one's, so core's `value < min` calls `min.__gt__(value)` and `value > max` calls `max.__lt__(value)`.
    Everything else (JSON for the frontend, arithmetic, equality) sees a plain float."""

    def __gt__(self, other):
        return True if _is_nan(other) else float.__gt__(self, other)

    def __lt__(self, other):
        return True if _is_nan(other) else float.__lt__(self, other)


def float_input(name: str, default: float, low: float, high: float, step: float, tooltip: str, **options):
    """A FLOAT widget in [low, high] that core's range check keeps NaN out of."""
    return io.Float.Input(name, default=default, min=NanRefusingBound(low), max=NanRefusingBound(high), step=step,
                          tooltip=tooltip, **options)


def size_inputs(width: int = 512, height: int = 320, note: str = "") -> list:
    """Width and height, as the sampler and the tokenizer encoder name them (`note`: what else sets them)."""
    stride = rules.MIN_SIZE_STRIDE
    rule = "a multiple of the tokenizer stride (8 for FSQ320, 16 for IBQ1024)."
    return [
        io.Int.Input("width", default=width, min=stride, max=rules.MAX_SIZE, step=stride,
                     tooltip=" ".join(filter(None, ["Pixel width;", rule, note]))),
        io.Int.Input("height", default=height, min=stride, max=rules.MAX_SIZE, step=stride,
                     tooltip=" ".join(filter(None, ["Pixel height;", rule, note]))),
    ]


def sampling_inputs(steps: int = 25) -> list:
    """The widgets shared by the sampler and the extender (same names, ranges and tooltips)."""
    return [
        io.Int.Input("seed", default=0, min=0, max=rules.SEED_MAX, control_after_generate=True,
                     tooltip="Same seed + same settings = same tokens on the same device."),
        io.Int.Input("steps", default=steps, min=1, max=rules.MAX_STEPS,
                     tooltip="Sampling steps. URSA uses 25 for images and 50 for videos."),
        float_input("cfg", 7.0, *rules.GUIDANCE_RANGE, step=0.1, round=0.01,
                    tooltip="Classifier-free guidance scale in logit space (URSA default 7). <= 1 runs one branch "
                            "only (faster, no negative prompt)."),
        float_input("guidance_trunc", 0.9, *rules.UNIT_RANGE, step=0.01,
                    tooltip="Guidance is applied while the clock t < this; later steps run the conditional branch "
                            "only (same result as the reference, half the work)."),
    ]


def path_inputs() -> list:
    """The metric path's c, alpha and shift (0 = the checkpoint's value)."""
    return [
        float_input("c", 0.0, 0.0, rules.PATH_MAX["c"], step=0.1,
                    tooltip="Metric path scale c in beta_t = c (t/(1-t))^alpha. 0 = the checkpoint's value."),
        float_input("alpha", 0.0, 0.0, rules.PATH_MAX["alpha"], step=0.05,
                    tooltip="Metric path exponent alpha. 0 = the checkpoint's value."),
        float_input("shift", 0.0, 0.0, rules.PATH_MAX["shift"], step=0.1,
                    tooltip="Time shift lambda (> 1 spends more steps at high noise). 0 = the checkpoint's value."),
    ]
