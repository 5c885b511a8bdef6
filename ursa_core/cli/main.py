"""Argument parsing and the exit-code contract: 0 done, 1 an output could not be written (or a rank of a torchrun
launch failed), 2 bad input (one line, before any model loads), 3 download failed, 130 interrupted (Ctrl-C;
existing files untouched). Under torchrun every rank stops within seconds when one fails, and the launch prints one
line for it (ursa_core.parallel.ranks), never a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .. import __version__, rules
from ..errors import LaunchError, OutputError, URSAError
from ..files.media import RESIZE_MODES
from . import arguments

REAL_MODELS = ("BAAI/URSA-1.7B-FSQ320", "BAAI/URSA-1.7B-IBQ1024")
EXIT_OUTPUT, EXIT_INPUT, EXIT_DOWNLOAD, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 130, 143


def add_sampling_options(parser) -> None:
    """The generation options `ursa generate` and `ursa batch` share (a batch item may override some of them)."""
    parser.add_argument("--model", required=True, help="a model folder in the official layout, or 'tiny'")
    parser.add_argument("--negative", default=arguments.DEFAULTS["negative"],
                        help="negative prompt (default: empty, as the reference)")
    parser.add_argument("--frames", type=arguments.FRAMES, default=arguments.DEFAULTS["frames"],
                        help="1 for an image, 1+4k for a video (49 = 4 s at 12 fps)")
    parser.add_argument("--height", type=arguments.SIZE["height"],
                        help="default 320 (FSQ) / 1024 (IBQ); 64 for --model tiny")
    parser.add_argument("--width", type=arguments.SIZE["width"],
                        help="default 512 (FSQ) / 1024 (IBQ); 64 for --model tiny")
    parser.add_argument("--steps", type=arguments.STEPS,
                        help="default 25 for images, 50 for videos, 8 for --model tiny")
    parser.add_argument("--cfg", dest="guidance", type=arguments.GUIDANCE, default=arguments.DEFAULTS["guidance"],
                        help="classifier-free guidance scale (<= 1: one branch, no negative prompt)")
    parser.add_argument("--guidance-trunc", type=arguments.GUIDANCE_TRUNC, default=0.9)
    parser.add_argument("--shift", type=arguments.SHIFT, help="time shift lambda (default: the checkpoint's)")
    parser.add_argument("--motion", type=arguments.MOTION, help="video motion score prefix (default 9.0 for videos)")
    parser.add_argument("--seed", type=arguments.SEED, default=0)
    parser.add_argument("--resize", choices=RESIZE_MODES, default="crop")
    parser.add_argument("--dtype", type=arguments.DTYPE, default=arguments.DEFAULTS["dtype"],
                        help="auto, fp32, fp16 or bf16")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:1, ...; under torchrun auto is cuda:LOCAL_RANK")
    place = parser.add_argument_group("placement (as the ComfyUI loader's vq_device / text_device)")
    place.add_argument("--vq-device", type=arguments.PLACEMENT["vq_device"], default="default",
                       help="where the visual tokenizer runs: default (the transformer's device), cpu, cuda:N")
    place.add_argument("--text-device", type=arguments.PLACEMENT["text_device"], default="default",
                       help="where the token embedding table lives: default (the transformer's device), cpu, cuda:N")
    speed = parser.add_argument_group("speed and memory (GPU; see docs/PERFORMANCE.md)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the layers (faster after ~15 s)")
    speed.add_argument("--low-vram", action="store_true", help="stream layers from host memory (49 frames in 4.3 GiB)")
    speed.add_argument("--attention", type=arguments.ATTENTION, default="auto",
                       help=arguments.ATTENTION_HELP)
    speed.add_argument("--sampler", default="auto", type=arguments.SAMPLER,
                       help="jump-step kernels: triton (fused, CUDA), torch, or auto")
    speed.add_argument("--blocks-on-gpu", type=arguments.BLOCKS, default=0,
                       help="with --low-vram: how many layers stay on the GPU (the rest stream; default 0)")
    speed.add_argument("--weight-dtype", default="default", type=arguments.WEIGHT_DTYPE,
                       help="weight storage as ComfyUI's UNETLoader: default, fp8_e4m3fn or fp8_e5m2 (fp8 layer "
                            "weights, upcast per layer)")


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="headless text/image-to-image/video generation")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--image", help="condition the first frame on this image (I2V)")
    gen.add_argument("--last-image", help="condition the last frame on this image (interpolation)")
    gen.add_argument("--out", required=True, help="out.png for images, out.mp4 for videos")
    gen.add_argument("--save-tokens", help="also write the sampled tokens to this .safetensors file")
    gen.add_argument("--parallel", type=arguments.PARALLEL, default="none",
                     help="under torchrun: share ONE generation between the ranks: cfg (2 ranks: one guidance "
                          "branch each), sp (N ranks: sequence parallel, N divides the KV heads), cfg+sp (2N)")
    add_sampling_options(gen)


def _add_batch(sub) -> None:
    from ..batch.prompt_sets import FORMATS
    bat = sub.add_parser("batch", help="a prompt set (txt, JSONL, GenEval, DPG-Bench, VBench): one model load, "
                                       "resumable; under torchrun the ranks share the set")
    bat.add_argument("--prompts", required=True, help="a .txt (one prompt a line), .jsonl, GenEval's "
                                                      "evaluation_metadata.jsonl or prompts.json, DPG-Bench "
                                                      "prompts.json or a VBench folder of <track>.txt")
    bat.add_argument("--format", choices=FORMATS, default="auto",
                     help="default: from the name and content; geneval, dpgbench and vbench follow the reference "
                          "protocol (samples, size, steps, cfg, negative, dtype) unless an option says otherwise")
    bat.add_argument("--prompt-field", choices=("dense_prompt", "prompt", "longer", "short"),
                     help="GenEval: dense_prompt (the reference's, default) or prompt; VBench: longer (the "
                          "reference's, default) or short")
    bat.add_argument("--outdir", required=True, help="output folder (finished outputs there are skipped)")
    bat.add_argument("--overwrite-stale", action="store_true",
                     help="regenerate outputs in --outdir made under another seed rule or other settings "
                          "(without it such a folder is refused)")
    bat.add_argument("--samples", type=arguments.SAMPLES,
                     help="samples per prompt (default 1; GenEval 4, DPG-Bench 4 in one 2x2 grid, VBench 5)")
    add_sampling_options(bat)
    # None: not given, so the preset's value applies (ursa_core.cli.batch_command.apply_protocol)
    bat.set_defaults(**{name: None for name in arguments.PRESET_OPTIONS})


def _add_launch(sub) -> None:
    launch = sub.add_parser("launch", help="torchrun for batch / generate: `ursa launch --nproc-per-node 8 batch "
                                           "...`; one line and an exit code when a rank fails or on Ctrl-C")
    launch.add_argument("torchrun_and_command", nargs=argparse.REMAINDER,
                        help="torchrun's options (--nproc-per-node, --nnodes, --rdzv-*, ...), then batch or "
                             "generate and its options")


def build_parser() -> argparse.ArgumentParser:
    parser = rules.OneLineParser(prog="ursa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_batch(sub)
    _add_launch(sub)
    dec = sub.add_parser("decode", help="decode a token file (from --save-tokens) to PNG or MP4 without sampling")
    dec.add_argument("--tokens", required=True, help="a .safetensors token file")
    dec.add_argument("--out", required=True, help="out.png for images, out.mp4 for videos")
    dec.add_argument("--model", help="model folder or 'tiny' (default: the model recorded in the token file)")
    dec.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    tiny = sub.add_parser("make-tiny", help="write a tiny RANDOM checkpoint in the official layout (outputs noise)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--vae", choices=("fsq", "ibq"), default="fsq")
    tiny.add_argument("--shard", action="store_true", help="write sharded transformer weights with an index json")
    dl = sub.add_parser("download", help="fetch a real checkpoint from the Hugging Face Hub")
    dl.add_argument("repo", help=f"e.g. {REAL_MODELS[0]}")
    dl.add_argument("--dir", default="models/ursa", help="parent folder (a ComfyUI models/ursa folder works)")
    return parser


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
        session.say(message if quiet else f"error: {message}")
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


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["launch"]:   # torchrun's options are its own: they pass through unparsed (argparse would not)
        from .launch_command import run_launch
        try:
            return run_launch(argv[1:], build_parser())
        except URSAError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad argument (one line already printed), --help or --version: return its code
        return int(exc.code or 0)
    try:
        if args.command in ("generate", "batch"):
            return _run_sampling(args)
        from . import tools
        return {"decode": tools.run_decode, "make-tiny": tools.run_make_tiny,
                "download": tools.run_download}[args.command](args)
    except (OutputError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except URSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
