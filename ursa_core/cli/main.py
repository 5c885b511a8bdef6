"""Argument parsing and the exit-code contract: 0 done, 1 an output could not be written, 2 bad input (one line,
before any model loads), 3 download failed, 130 interrupted (Ctrl-C; existing files untouched)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .. import __version__, preflight, rules
from ..errors import OutputError, URSAError

REAL_MODELS = ("BAAI/URSA-1.7B-FSQ320", "BAAI/URSA-1.7B-IBQ1024")
EXIT_OUTPUT, EXIT_INPUT, EXIT_DOWNLOAD, EXIT_INTERRUPTED = 1, 2, 3, 130


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="headless text/image-to-image/video generation")
    gen.add_argument("--model", required=True, help="a model folder in the official layout, or 'tiny'")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="", help="negative prompt (default: empty, as the reference)")
    gen.add_argument("--frames", type=preflight.FRAMES, default=1,
                     help="1 for an image, 1+4k for a video (49 = 4 s at 12 fps)")
    gen.add_argument("--height", type=preflight.SIZE["height"],
                     help="default 320 (FSQ) / 1024 (IBQ); 64 for --model tiny")
    gen.add_argument("--width", type=preflight.SIZE["width"],
                     help="default 512 (FSQ) / 1024 (IBQ); 64 for --model tiny")
    gen.add_argument("--steps", type=preflight.STEPS, help="default 25 for images, 50 for videos, 8 for --model tiny")
    gen.add_argument("--cfg", type=preflight.CFG, default=7.0, help="classifier-free guidance scale")
    gen.add_argument("--guidance-trunc", type=preflight.GUIDANCE_TRUNC, default=0.9)
    gen.add_argument("--shift", type=preflight.SHIFT, help="time shift lambda (default: the checkpoint's)")
    gen.add_argument("--motion", type=preflight.MOTION, help="video motion score prefix (default 9.0 for videos)")
    gen.add_argument("--seed", type=preflight.SEED, default=0)
    gen.add_argument("--image", help="condition the first frame on this image (I2V)")
    gen.add_argument("--last-image", help="condition the last frame on this image (interpolation)")
    gen.add_argument("--resize", choices=("crop", "pad", "stretch"), default="crop")
    gen.add_argument("--dtype", type=preflight.DTYPE, default="auto", help="auto, fp32, fp16 or bf16")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    gen.add_argument("--out", required=True, help="out.png for images, out.mp4 for videos")
    gen.add_argument("--save-tokens", help="also write the sampled tokens to this .safetensors file")
    speed = gen.add_argument_group("speed and memory (GPU; see docs/PERFORMANCE.md)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the layers (faster after ~15 s)")
    speed.add_argument("--low-vram", action="store_true", help="stream layers from host memory (49 frames in 4.3 GiB)")
    speed.add_argument("--attention", type=preflight.ATTENTION, default="auto",
                       help=preflight.ATTENTION_HELP)
    speed.add_argument("--sampler", default="auto", type=preflight.SAMPLER,
                       help="jump-step kernels: triton (fused, CUDA), torch, or auto")
    speed.add_argument("--blocks-on-gpu", type=preflight.BLOCKS, default=0,
                       help="with --low-vram: how many layers stay on the GPU (the rest stream; default 0)")
    speed.add_argument("--weight-dtype", default="default", type=preflight.WEIGHT_DTYPE,
                       help="weight storage as ComfyUI's UNETLoader: default, fp8_e4m3fn or fp8_e5m2 (fp8 layer "
                            "weights, upcast per layer)")


def build_parser() -> argparse.ArgumentParser:
    parser = rules.OneLineParser(prog="ursa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
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


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad argument (one line already printed), --help or --version: return its code
        return int(exc.code or 0)
    try:
        if args.command == "generate":
            from .generate import run_generate
            with preflight.warnings_on_stderr():
                return run_generate(args)
        from . import tools
        return {"decode": tools.run_decode, "make-tiny": tools.run_make_tiny,
                "download": tools.run_download}[args.command](args)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except URSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
