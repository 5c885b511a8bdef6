"""Argument parsing, the torch check and the exit codes (cli/__init__.py). Importing this module needs no torch, so
`ursa --help`, `ursa COMMAND --help` and `ursa --version` work before torch is installed; every command checks for
it first and says in one line how to get it."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from .. import __version__, rules
from ..batch.prompt_sets import FORMATS
from ..checkpoint.defaults import MODEL_DEFAULTS, ModelDefaults
from ..errors import LaunchError, OutputError, URSAError
from ..files import image_file
from . import arguments
from .exits import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_TERMINATED

REAL_MODELS = ("BAAI/URSA-1.7B-FSQ320", "BAAI/URSA-1.7B-IBQ1024")
DESCRIPTION = ("URSA (uniform discrete diffusion with a metric path) on the command line: text to image or video, "
               "image to video, first/last-frame interpolation and prompt sets, on one GPU, several, or the CPU.")
EXIT_CODES = ("Exit codes: 0 done; 1 an output could not be written (or a rank of a torchrun launch failed: every "
              "rank stops, one line); 2 bad input or no torch (one line, before any model loads); 3 a download "
              "failed; 130 cancelled (Ctrl-C; existing files are left as they were).")
NEEDS_TORCH = ("`ursa {command}` needs PyTorch, {why}. Install the build for this machine first (CPU: pip install "
               "torch; NVIDIA GPU: the command from https://pytorch.org/get-started/locally/). ComfyUI users already "
               "have it: install ursa into ComfyUI's Python environment and run it from there.")


def per_checkpoint(value: Callable[[ModelDefaults], object]) -> str:
    """'320 for URSA-1.7B-FSQ320, ...': a default of each checkpoint (checkpoint/defaults.py), as help shows it."""
    return ", ".join(f"{value(defaults)} for {'--model tiny' if name == 'tiny' else name}"
                     for name, defaults in MODEL_DEFAULTS.items())


def add_sampling_options(parser) -> None:
    """The generation options `ursa generate` and `ursa batch` share (a batch item may override some of them)."""
    parser.add_argument("--model", required=True,
                        help="a model folder in the official layout, or 'tiny' (a tiny random checkpoint built on "
                             "first use: noise, for trying the pipeline)")
    parser.add_argument("--negative", default=arguments.DEFAULTS["negative"],
                        help="negative prompt (default: empty, as the reference)")
    parser.add_argument("--frames", type=arguments.FRAMES, default=arguments.DEFAULTS["frames"],
                        help="1 for an image, 1 + 4k for a video (49 = 4 s at 12 fps) (default: %(default)s)")
    parser.add_argument("--height", type=arguments.SIZE["height"],
                        help=f"pixels (default: {per_checkpoint(lambda d: d.height)})")
    parser.add_argument("--width", type=arguments.SIZE["width"],
                        help=f"pixels (default: {per_checkpoint(lambda d: d.width)})")
    parser.add_argument("--steps", type=arguments.STEPS,
                        help=f"sampling steps, images/videos (default: "
                             f"{per_checkpoint(lambda d: f'{d.image_steps}/{d.video_steps}')})")
    parser.add_argument("--cfg", dest="guidance", metavar="CFG", type=arguments.GUIDANCE,
                        default=arguments.DEFAULTS["guidance"],
                        help="classifier-free guidance scale; <= 1: one branch, no negative prompt "
                             "(default: %(default)s)")
    parser.add_argument("--guidance-trunc", type=arguments.GUIDANCE_TRUNC, default=0.9,
                        help="guidance applies while the clock t < this (default: %(default)s)")
    parser.add_argument("--shift", type=arguments.SHIFT,
                        help="time shift lambda of the step grid (default: the checkpoint's)")
    parser.add_argument("--motion", type=arguments.MOTION,
                        help=f"motion score 0..10 put before video prompts (default: {rules.DEFAULT_MOTION} for "
                             f"videos, none for images)")
    parser.add_argument("--seed", type=arguments.SEED, default=0,
                        help="the same seed gives the same result (default: %(default)s)")
    parser.add_argument("--resize", choices=image_file.RESIZE_MODES, default="crop",
                        help="how --image/--last-image fit the frame: crop (cover, cut the middle), pad (fit, black "
                             "bars) or stretch (default: %(default)s)")
    parser.add_argument("--dtype", type=arguments.DTYPE, default=arguments.DEFAULTS["dtype"],
                        help="auto (bf16 or fp16 on GPUs, fp32 on the CPU), fp32, fp16 or bf16 (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...; under torchrun auto is "
                                                         "cuda:LOCAL_RANK (default: %(default)s)")
    place = parser.add_argument_group("placement (as the ComfyUI loader's vq_device / text_device)")
    place.add_argument("--vq-device", type=arguments.PLACEMENT["vq_device"], default="default",
                       help="where the visual tokenizer runs: default (the transformer's device), cpu, cuda:N "
                            "(default: %(default)s)")
    place.add_argument("--text-device", type=arguments.PLACEMENT["text_device"], default="default",
                       help="where the token embedding table lives: default (the transformer's device), cpu, cuda:N "
                            "(default: %(default)s)")
    speed = parser.add_argument_group("speed and memory (GPU; see docs/PERFORMANCE.md)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the layers (faster after ~15 s)")
    speed.add_argument("--low-vram", action="store_true", help="stream layers from host memory (49 frames in 4.3 GiB)")
    speed.add_argument("--attention", type=arguments.ATTENTION, default="auto", help=arguments.attention_help())
    speed.add_argument("--sampler", default="auto", type=arguments.SAMPLER,
                       help="jump-step kernels: triton (fused, CUDA), torch, or auto (default: %(default)s)")
    speed.add_argument("--blocks-on-gpu", type=arguments.BLOCKS, default=0,
                       help="with --low-vram: how many layers stay on the GPU, the rest stream (default: %(default)s)")
    speed.add_argument("--weight-dtype", default="default", type=arguments.WEIGHT_DTYPE,
                       help="weight storage as ComfyUI's UNETLoader: default, fp8_e4m3fn or fp8_e5m2 (fp8 layer "
                            "weights, upcast per layer) (default: %(default)s)")


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="one image or video from a prompt (and images)", description=(
        "Generate one image or video: text to image/video, image to video (--image), interpolation (--last-image)."),
        epilog=EXIT_CODES)
    gen.add_argument("--prompt", required=True, help="what to show")
    gen.add_argument("--image", help=f"condition the first frame on this image (image to video); any mode Pillow "
                                     f"reads, up to {image_file.MAX_IMAGE_SIDE}x{image_file.MAX_IMAGE_SIDE} pixels")
    gen.add_argument("--last-image", help="condition the last frame on this image (interpolation, with --image)")
    gen.add_argument("--out", required=True, help="out.png for an image (frames: out_00000.png, ...) or out.mp4")
    gen.add_argument("--save-tokens", help="also write the sampled tokens to this .safetensors file (`ursa decode` "
                                           "turns them into pixels again)")
    gen.add_argument("--parallel", type=arguments.PARALLEL, default="none",
                     help="under torchrun: share ONE generation between the ranks: cfg (2 ranks: one guidance "
                          "branch each), sp (N ranks: sequence parallel, N divides the KV heads), cfg+sp (2N) "
                          "(default: %(default)s)")
    add_sampling_options(gen)


def _add_batch(sub) -> None:
    bat = sub.add_parser("batch", help="a prompt set, resumable, on one GPU or many", description=(
        "A prompt set (txt, JSONL, GenEval, DPG-Bench, VBench) with one model load; resumable; under torchrun the "
        "ranks share the set. An evaluation set (GenEval, DPG-Bench, VBench) takes its reference protocol's "
        "samples, size, steps, cfg, frames, negative prompt and dtype (README, 'Presets') unless given here."),
        epilog=EXIT_CODES)
    bat.add_argument("--prompts", required=True, help="a .txt (one prompt a line), .jsonl, GenEval's "
                                                      "evaluation_metadata.jsonl or prompts.json, DPG-Bench "
                                                      "prompts.json or a VBench folder of <track>.txt")
    bat.add_argument("--format", choices=FORMATS, default="auto",
                     help="auto: from the file name and content; geneval, dpgbench and vbench follow the reference "
                          "protocol (samples, size, steps, cfg, negative, dtype) unless an option says otherwise "
                          "(default: %(default)s)")
    bat.add_argument("--prompt-field", choices=("dense_prompt", "prompt", "longer", "short"),
                     help="GenEval: dense_prompt (the reference's, default) or prompt; VBench: longer (the "
                          "reference's, default) or short")
    bat.add_argument("--outdir", required=True, help="output folder (finished outputs there are skipped)")
    bat.add_argument("--overwrite-stale", action="store_true",
                     help="regenerate outputs in --outdir made under another seed rule or other settings "
                          "(without it such a folder is refused)")
    bat.add_argument("--samples", type=arguments.SAMPLES, default=arguments.DEFAULTS["samples"],
                     help="samples per prompt (GenEval: 4, VBench: 5, DPG-Bench: 4, one 2x2 grid) "
                          "(default: %(default)s)")
    add_sampling_options(bat)
    _preset_defaults(bat)


def _preset_defaults(bat) -> None:
    """A preset's option is None until the command line gives it (ursa_core.cli.batch_command.apply_protocol);
    help still shows the plain default."""
    for action in bat._actions:
        if action.dest in arguments.PRESET_OPTIONS:
            if action.help and "%(default)s" in action.help:
                action.help = action.help.replace("%(default)s", str(action.default))
            action.default = None


def _add_launch(sub) -> None:
    launch = sub.add_parser("launch", help="torchrun for batch / generate, ending in one line and an exit code",
                            description="`ursa launch [torchrun options] batch|generate [options]`: torchrun's own "
                                        "launcher with the same options; a failing or interrupted rank stops every "
                                        "rank within seconds, with one line.", epilog=EXIT_CODES)
    launch.add_argument("torchrun_and_command", nargs=argparse.REMAINDER,
                        help="torchrun's options (--nproc-per-node, --nnodes, --rdzv-*, ...), then batch or "
                             "generate and its options")


def _add_tools(sub) -> None:
    dec = sub.add_parser("decode", help="saved tokens (--save-tokens) to PNG or MP4",
                         description="Decode a token file to pixels with the model that made it (only its vae/ loads).")
    dec.add_argument("--tokens", required=True, help="a .safetensors token file")
    dec.add_argument("--out", required=True, help="out.png for an image (frames: out_00000.png, ...) or out.mp4")
    dec.add_argument("--model", help="model folder or 'tiny' (default: the model recorded in the token file)")
    dec.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    tiny = sub.add_parser("make-tiny", help="write a tiny RANDOM checkpoint (outputs noise)",
                          description="Write a tiny random checkpoint in the official layout: it loads and runs like "
                                      "a real one, in seconds, and its outputs are noise.")
    tiny.add_argument("dir", help="the folder to write")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    tiny.add_argument("--vae", choices=("fsq", "ibq"), default="fsq",
                      help="video tokenizer (FSQ) or image tokenizer (IBQ) (default: %(default)s)")
    tiny.add_argument("--shard", action="store_true", help="write sharded transformer weights with an index json")
    dl = sub.add_parser("download", help="fetch a checkpoint from the Hugging Face Hub",
                        description="Download a checkpoint; an interrupted download resumes, and the folder appears "
                                    "only when complete.")
    dl.add_argument("repo", help=f"{' or '.join(REAL_MODELS)}")
    dl.add_argument("--dir", default="models/ursa",
                    help="parent folder; a ComfyUI models/ursa folder works (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = rules.OneLineParser(prog="ursa", description=DESCRIPTION,
                                 epilog=f"{EXIT_CODES} `ursa COMMAND --help` lists its options and their defaults.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    _add_generate(sub)
    _add_batch(sub)
    _add_launch(sub)
    _add_tools(sub)
    return parser


def torch_problem() -> Optional[str]:
    """Why torch cannot be imported here, or None."""
    try:
        import torch  # noqa: F401
    except (ImportError, OSError) as exc:   # OSError: installed but broken (a missing CUDA library, ...)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "torch":
            return "which is not installed here"
        return f"which does not import here ({str(exc).splitlines()[0]})"
    return None


def needs_torch(command: str, why: str) -> int:
    print(f"error: {NEEDS_TORCH.format(command=command, why=why)}", file=sys.stderr)
    return EXIT_INPUT


def run(argv: Optional[list[str]] = None) -> int:
    """Parse, check for torch, run the command; an error is one line and an exit code (Ctrl-C: cli.main)."""
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["launch"] and "-h" not in words[1:2] and "--help" not in words[1:2]:
        return _launch(words[1:])   # torchrun's options are its own: they pass through unparsed
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:  # a bad argument (one line already printed), --help or --version: return its code
        return int(exc.code or 0)
    except ImportError:        # the rule of an option (--attention, --vq-device) needs torch
        problem = torch_problem()
        if problem is None:
            raise
        return needs_torch(next((w for w in words if not w.startswith("-")), "COMMAND"), problem)
    problem = torch_problem()
    if problem is not None:
        return needs_torch(args.command, problem)
    try:
        return _dispatch(args)
    except (OutputError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except URSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT


def _launch(words: list[str]) -> int:
    problem = torch_problem()
    if problem is not None:
        return needs_torch("launch", problem)
    from .launch_command import run_launch
    try:
        return run_launch(words, build_parser())
    except URSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("generate", "batch"):
        return _run_sampling(args)
    from . import tools
    return {"decode": tools.run_decode, "make-tiny": tools.run_make_tiny,
            "download": tools.run_download}[args.command](args)


def _exit_of(exc: BaseException, rank: int) -> tuple[int, str]:
    """The exit code and one line of a rank's own failure."""
    from ..parallel.ranks import Terminated

    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, "terminated (SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "cancelled"
    if isinstance(exc, (OutputError, LaunchError)):
        return EXIT_OUTPUT, str(exc)
    if isinstance(exc, URSAError):
        return EXIT_INPUT, str(exc)
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return EXIT_OUTPUT, f"rank {rank}: {type(exc).__name__}: {first_line}"


def _stop_ranks(session, exc: BaseException) -> int:
    """A rank of a torchrun launch fails or is interrupted: one line for the whole launch and an exit code, never a
    traceback (ursa_core.parallel.ranks decides which rank prints)."""
    if not isinstance(exc, (URSAError, KeyboardInterrupt)):
        session.settle()   # a collective that failed may mean a peer vanished: the watch names it
    if session.stopped_by_peer or (session.abort is not None and session.abort.origin != session.rank):
        abort = session.fail(session.abort.code, session.abort.message)   # stopped for another rank's failure
        if session.prints(abort):
            session.say(session.line(abort))
        return abort.code
    code, message = _exit_of(exc, session.rank)
    abort = session.fail(code, message)
    quiet = code in (EXIT_INTERRUPTED, EXIT_TERMINATED)
    if abort.reporter == session.rank or (not quiet and abort.message != message):
        session.say(f"\n{message}" if quiet else f"error: {message}")   # cancelled: on a line of its own (cli)
    return code


def _run_sampling(args) -> int:
    """`generate` / `batch`, in a torchrun launch's session when there is one."""
    from .batch_command import run_batch
    from .generate_command import run_generate
    from ..parallel.distributed import finish, join_launch

    session = None
    try:
        with arguments.warnings_on_stderr():
            session = join_launch()
            return (run_generate if args.command == "generate" else run_batch)(args, session)
    except BaseException as exc:
        if session is None or isinstance(exc, SystemExit):
            raise
        return _stop_ranks(session, exc)
    finally:
        finish(session)  # leave torchrun's process group and the launch, if this run joined one
