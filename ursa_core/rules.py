"""Every input rule in one place: what values are allowed, the defaults per tokenizer, and the one-line messages.

The CLI (argparse `type=` functions), the Python API (`generate`) and every node's `validate_inputs` read these, so a
rule changes in one line. Each check raises `InputError` whose message names the value and the rule; `first_problem`
turns the same checks into the string a ComfyUI validator returns. Importing this module needs no torch (the CLI's
parser and `ursa --help` use it before torch is known to be installed); the device rules import it when called.
"""
from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .errors import InputError

if TYPE_CHECKING:
    import torch

# --- limits ---------------------------------------------------------------------------------------------------------
VIDEO_STRIDE = 4                   # pixel frames per latent frame of the video tokenizer (1 + 4k frames)
MAX_FRAMES = 1 + VIDEO_STRIDE * 60  # 241 frames = 20 s at 12 fps; beyond this no device has the memory
MAX_CARRIED = (MAX_FRAMES - 1) // VIDEO_STRIDE  # given / carried latent frames: every latent frame of a clip but one
MIN_SIZE_STRIDE = 8                # the smallest tokenizer stride (FSQ); IBQ checkpoints need 16
MAX_SIZE = 4096
MAX_STEPS = 1000
MAX_SAMPLES = 1000                 # samples per prompt of a batch
SEED_MAX = 0xFFFFFFFFFFFFFFFF
GUIDANCE_RANGE = (0.0, 100.0)
MOTION_RANGE = (0.0, 10.0)
UNIT_RANGE = (0.0, 1.0)            # guidance_trunc, start times, carry_start
LORA_STRENGTH_RANGE = (-100.0, 100.0)  # as core's LoraLoaderModelOnly
PATH_MAX = {"c": 100.0, "alpha": 10.0, "shift": 20.0}  # metric-path scale, exponent and time shift (all > 0)
MAX_GROW = 64                      # tokens a repaint mask may grow by (64 IBQ tokens = 1024 px)
MAX_FEATHER = 512                  # pixels a composite may feather over

# --- choices --------------------------------------------------------------------------------------------------------
DTYPES = ("auto", "bf16", "fp16", "fp32")
SAMPLERS = ("auto", "torch", "triton")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e5m2")  # weight storage, as ComfyUI's UNETLoader names it
LOW_VRAM_MODES = ("auto", "off", "stream")             # block swap: as core models, never, always
MAX_BLOCKS = 256                                       # decoder layers kept on the GPU (more than any URSA has)
DEVICE_TYPES = ("cpu", "cuda", "mps")
PARALLEL_MODES = ("none", "cfg", "sp", "cfg+sp")       # how the ranks of one generation share it (parallel/)
DEVICE_STRATEGIES = ("auto", "branches", "samples")    # how one process shares work between devices (parallel/)
MAX_DEVICES = 16                                       # devices of one process (URSA Devices)
MAX_BATCH = 64                                         # samples of one sampler node

# --- defaults (those of each checkpoint: checkpoint/defaults.py) ---------------------------------------------------
DEFAULT_MOTION = 9.0  # the reference demos' motion score for videos


def _fail(message: str) -> None:
    raise InputError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- numbers --------------------------------------------------------------------------------------------------------
def integer(name: str, value, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        _fail(f"{name}={value!r} is not allowed: use an integer from {low} to {high}")
    return value


def number(name: str, value, low: float, high: float, *, above_low: bool = False) -> float:
    """A finite number in [low, high] (or (low, high] with above_low); NaN and inf never pass."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if above_low else value >= low) and value <= high
    if not ok:
        lower = f"above {low:g}" if above_low else f"from {low:g}"
        _fail(f"{name}={value!r} is not allowed: use a finite number {lower} to {high:g}")
    return float(value)


def steps(value) -> int:
    return integer("steps", value, 1, MAX_STEPS)


def seed(value) -> int:
    return integer("seed", value, 0, SEED_MAX)


def guidance(value, name: str = "guidance") -> float:
    """The classifier-free guidance scale (the node widget and the CLI flag call it cfg)."""
    return number(name, value, *GUIDANCE_RANGE)


def unit(name: str, value) -> float:
    return number(name, value, *UNIT_RANGE)


def motion(value) -> Optional[float]:
    return None if value is None else number("motion", value, *MOTION_RANGE)


def lora_strength(value) -> float:
    """How much of a LoRA's change is added: finite, within LORA_STRENGTH_RANGE (as core's LoraLoaderModelOnly)."""
    return number("strength", value, *LORA_STRENGTH_RANGE)


def path_param(name: str, value) -> float:
    """c, alpha and shift (lambda) of the metric path: finite and > 0."""
    return number(name, value, 0.0, PATH_MAX[name], above_low=True)


# --- frames and sizes -----------------------------------------------------------------------------------------------
def frames(value, temporal_stride: int = VIDEO_STRIDE, image_only: bool = False, name: str = "frames",
           min_latents: int = 1) -> int:
    """1 (an image) or 1 + stride*k pixel frames; `min_latents=2` for inputs that must be videos."""
    if image_only:
        if value != 1:
            _fail(f"{name}={value!r} is not allowed: this checkpoint's image tokenizer makes single images "
                  f"({name}=1)")
        return value
    s = temporal_stride
    if not _is_int(value) or not 1 + s * (min_latents - 1) <= value <= MAX_FRAMES or (value - 1) % s:
        first = "use 1 (an image) or 1 + " if min_latents <= 1 else "use a video of 1 + "
        _fail(f"{name}={value!r} is not allowed: {first}{s}k frames ({1 + s}, {1 + 2 * s}, ..., {MAX_FRAMES})")
    return value


def latent_frames(pixel_frames: int, temporal_stride: int = VIDEO_STRIDE) -> int:
    """The 1 + stride*k rule read forwards: pixel frames -> latent frames (the first latent frame is one picture)."""
    return (pixel_frames - 1) // temporal_stride + 1


def pixel_frames(latent_frames: int, temporal_stride: int = VIDEO_STRIDE) -> int:
    """The same rule read backwards: latent frames -> the pixel frames they decode to."""
    return (latent_frames - 1) * temporal_stride + 1


def latent_frame_of(pixel_frame: int, temporal_stride: int = VIDEO_STRIDE) -> int:
    """The same rule read per frame: the latent frame pixel frame `pixel_frame` (0-based) belongs to. Latent frame 0
    is pixel frame 0 alone (the causal tokenizer's first picture); latent frame k >= 1 is pixel frames
    stride*(k-1)+1 .. stride*k."""
    return (pixel_frame + temporal_stride - 1) // temporal_stride


def size(name: str, value, stride: int = MIN_SIZE_STRIDE) -> int:
    if not _is_int(value) or not stride <= value <= MAX_SIZE or value % stride:
        _fail(f"{name}={value!r} is not allowed: use a multiple of {stride} from {stride} to {MAX_SIZE} "
              f"(the tokenizer's stride)")
    return value


# --- repainting ----------------------------------------------------------------------------------------------------
def strength(value) -> float:
    """How strongly a mask repaints: a token's start time is 1 - strength * its mask level (1 = regenerate)."""
    return unit("strength", value)


def grow(value) -> int:
    return integer("grow", value, 0, MAX_GROW)


def feather(value) -> int:
    return integer("feather", value, 0, MAX_FEATHER)


def padding(name: str, value) -> int:
    """Pixels added on one side of the canvas for outpainting."""
    return integer(name, value, 0, MAX_SIZE)


def outpaint_sides(left, right, top, bottom) -> tuple[int, int, int, int]:
    """Pixels added on each side of an outpainted canvas, each checked as a padding."""
    return tuple(padding(name, v) for name, v in zip(("left", "right", "top", "bottom"), (left, right, top, bottom)))


def outpaint(text: str) -> tuple[int, int, int, int]:
    """'L,R,T,B' pixels added left, right, top and bottom (the --outpaint flag)."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        _fail(f"outpaint={text!r} is not allowed: use four whole numbers of pixels L,R,T,B (e.g. 0,256,0,0)")
    sides = outpaint_sides(*values)
    if not any(sides):
        _fail(f"outpaint={text!r} adds nothing: give at least one side more than 0 pixels")
    return sides


# --- choices --------------------------------------------------------------------------------------------------------
def choice(name: str, value, options: Sequence[str]) -> str:
    if value not in options:
        _fail(f"{name}={value!r} is not allowed: use one of {', '.join(options)}")
    return value


def dtype(value) -> str:
    return choice("dtype", str(value).lower(), DTYPES)


def weight_dtype(value) -> str:
    return choice("weight_dtype", value, WEIGHT_DTYPES)


def low_vram_mode(value) -> str:
    return choice("low_vram", value, LOW_VRAM_MODES)


def blocks_on_gpu(value) -> int:
    return integer("blocks_on_gpu", value, 0, MAX_BLOCKS)


def device(value: str) -> torch.device:
    """'auto' or a device that exists on this machine (cuda:N within the visible GPUs)."""
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        _fail(f"device={value!r} is not allowed: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            _fail(f"device={value!r} is not available: this machine has no CUDA GPU; use cpu")
        if dev.index is not None and dev.index >= count:
            _fail(f"device={value!r} is not available: this machine has {count} CUDA GPU(s), cuda:0 to "
                  f"cuda:{count - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        _fail(f"device={value!r} is not available on this machine; use cpu")
    return dev


def rank_device(value: str, local_rank: int, world: int) -> torch.device:
    """The device of one of `world` ranks on a machine: auto is cuda:LOCAL_RANK (the CPU without GPUs); a named
    GPU is refused, since every rank would take the same one."""
    import torch

    if value == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = device(value)
    if dev.type != "cpu":
        _fail(f"device={value!r} with {world} ranks is not allowed: every rank would use it; use auto "
              f"(cuda:LOCAL_RANK) or cpu")
    return dev


def device_list(value) -> list[torch.device]:
    """URSA Devices' list: devices of this machine separated by commas (cpu, cuda:N, mps; `cuda` is cuda:0). A
    device may repeat (two weight copies on one GPU: what the benchmark compares with one copy)."""
    import torch

    names = [part.strip() for part in str(value).split(",")] if isinstance(value, str) else []
    if not names or "" in names or len(names) > MAX_DEVICES:
        _fail(f"devices={value!r} is not allowed: name 1 to {MAX_DEVICES} devices separated by commas, e.g. "
              f"'cuda:0, cuda:1'")
    found = []
    for name in names:
        if name == "auto":
            _fail(f"devices={value!r}: name each device (cpu, cuda:N), not auto")
        try:
            dev = device(name)
        except InputError as exc:
            raise InputError(f"devices={value!r}: {exc}") from None
        found.append(torch.device("cuda", 0) if dev.type == "cuda" and dev.index is None else dev)
    return found


def attention(value, on: Optional[torch.device] = None) -> str:
    """A backend of ursa_core.attention.backends that runs on the device the model computes on."""
    from .attention import backends as attention_registry

    choice("attention", value, attention_registry.names())
    if on is not None and value != "auto" and not attention_registry.is_available(value, on):
        _fail(f"attention={value!r} is not available on {on.type} ({attention_registry.summary(value)}): use one "
              f"of {', '.join(attention_registry.available_names(on))}")
    return value


def sampler(value, on: Optional[torch.device] = None, fused_available: bool = True) -> str:
    """auto, torch or triton; `fused_available` says whether the fused kernels run on `on` (the solver knows)."""
    choice("sampler", value, SAMPLERS)
    if value == "triton" and on is not None and not fused_available:
        _fail(f"sampler='triton' is not available on {on}: it needs a CUDA GPU with Triton; use auto or torch")
    return value


def placement_choices() -> list[str]:
    """Where the visual tokenizer or the text side may run: the front end's default, the CPU, or a visible GPU."""
    import torch

    return ["default", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def placement(name: str, value: str) -> str:
    """vq_device / text_device: "default" (the front end's choice), "cpu" or a visible GPU (the loader node and
    the CLI read this one rule)."""
    choices = placement_choices()
    if value not in choices:
        _fail(f"{name}={value!r} is not allowed on this machine: use one of {choices}")
    return value


def parallel_layout(mode: str, world: int, kv_heads: int) -> tuple[int, int]:
    """(cfg_ranks, sp_ranks) for `mode` on `world` ranks: cfg needs exactly 2, sp any number that divides
    the KV heads (each rank attends with whole KV groups), cfg+sp an even world whose half divides them."""
    choice("parallel", mode, PARALLEL_MODES)
    if mode == "none":
        if world != 1:
            _fail(f"parallel='none' with {world} ranks is not allowed: one generation runs on one rank; use "
                  f"--parallel cfg, sp or cfg+sp, or `ursa batch` to share a prompt set")
        return 1, 1
    cfg_ranks = 2 if mode.startswith("cfg") else 1
    if mode == "cfg" and world != 2:
        _fail(f"parallel='cfg' with {world} rank(s) is not allowed: CFG parallel runs on exactly 2 ranks")
    if mode != "cfg" and (world < 2 * cfg_ranks or world % cfg_ranks):
        _fail(f"parallel={mode!r} with {world} rank(s) is not allowed: use "
              f"{'an even number of ranks, at least 4' if cfg_ranks == 2 else 'at least 2 ranks'}")
    sp_ranks = world // cfg_ranks
    if kv_heads % sp_ranks:
        _fail(f"parallel={mode!r} splits heads over {sp_ranks} ranks, but the model's {kv_heads} KV heads do not "
              f"divide by {sp_ranks}: use a sequence-parallel size that divides {kv_heads}")
    return cfg_ranks, sp_ranks


# --- defaults -------------------------------------------------------------------------------------------------------
def default_motion(pixel_frames: int) -> Optional[float]:
    """Videos get the `motion=<score>, ` prompt prefix; single images never do (the reference's usage)."""
    return DEFAULT_MOTION if pixel_frames > 1 else None


def prompt_too_long(tokens: int, limit: int) -> Optional[str]:
    """The warning for a prompt that the model's max_prompt_length will cut (never cut silently)."""
    if tokens <= limit:
        return None
    return (f"warning: the prompt is {tokens} tokens but the model reads at most {limit} "
            f"(max_prompt_length); the last {tokens - limit} tokens are ignored")


# --- adapters -------------------------------------------------------------------------------------------------------
def first_problem(*checks: Callable[[], object]) -> str | bool:
    """A ComfyUI `validate_inputs` answer: the first failing check's message, or True."""
    for check in checks:
        try:
            check()
        except InputError as exc:
            return str(exc)
    return True


def arg_type(check: Callable[[object], object], convert: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse `type=` function: converts the text, then applies the rule (argparse prints the message)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(convert, convert.__name__)
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            return check(value)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse with bad input reported as ONE line `error: <rule>` and exit code 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")
