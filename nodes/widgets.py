"""Number widgets whose limits ComfyUI itself checks, per input, with NaN refused too.

ComfyUI files a `validate_inputs` message under every input the function names, and the function can read only
the inputs it names. So a node's `validate_inputs` names just the inputs of its one rule that core cannot check
(frames of 1 + 4k, a model folder); ranges are left to core's own per-input check, which reports each value on its
own widget. That check is `value < min` and `value > max`, and NaN (which an API prompt can send) compares False
with every number; these bounds make both comparisons fail for NaN.
"""
from __future__ import annotations

import math

from comfy_api.latest import io


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
