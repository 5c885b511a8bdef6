"""Command line: `python -m ursa_core {make-tiny, generate, download}`."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

from .errors import URSAError
from .weight_dtype import STORAGE_DTYPES

REAL_MODELS = ("BAAI/URSA-1.7B-FSQ320", "BAAI/URSA-1.7B-IBQ1024")


def cache_dir() -> Path:
    """Where `--model tiny` is built: $URSA_CACHE, else $XDG_CACHE_HOME/ursa_comfy, else ~/.cache/ursa_comfy."""
    if os.environ.get("URSA_CACHE"):
        return Path(os.environ["URSA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ursa_comfy"


def tiny_model_dir() -> Path:
    """Build the tiny random checkpoint once and reuse it."""
    from .tiny import make_tiny

    import shutil

    folder = cache_dir() / "tiny-random-fsq-v1"
    if not (folder / "model_index.json").is_file():
        # Build beside it and rename, so a half-written folder is never mistaken for a finished one.
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        make_tiny(tmp)
        try:
            tmp.replace(folder)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model_index.json").is_file():
            raise URSAError(f"could not create the tiny checkpoint in {folder}")
    return folder


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ursa_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("make-tiny", help="write a tiny RANDOM checkpoint in the official layout (outputs noise)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--vae", choices=("fsq", "ibq"), default="fsq")
    tiny.add_argument("--shard", action="store_true", help="write sharded transformer weights with an index json")
    gen = sub.add_parser("generate", help="headless text/image-to-image/video generation")
    gen.add_argument("--model", required=True, help="a model folder in the official layout, or 'tiny'")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="", help="negative prompt (default: empty, as the reference)")
    gen.add_argument("--frames", type=int, default=1, help="1 for an image, 1+4k for a video (49 = 4 s at 12 fps)")
    gen.add_argument("--height", type=int, help="default 320 (FSQ) / 1024 (IBQ); 64 for --model tiny")
    gen.add_argument("--width", type=int, help="default 512 (FSQ) / 1024 (IBQ); 64 for --model tiny")
    gen.add_argument("--steps", type=int, help="default 25 for images, 50 for videos, 8 for --model tiny")
    gen.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale")
    gen.add_argument("--guidance-trunc", type=float, default=0.9)
    gen.add_argument("--shift", type=float, help="time shift lambda (default: the checkpoint's)")
    gen.add_argument("--motion", type=float, help="video motion score prefix (default 9.0 for videos)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--image", help="condition the first frame on this image (I2V)")
    gen.add_argument("--last-image", help="condition the last frame on this image (interpolation)")
    gen.add_argument("--resize", choices=("crop", "pad", "stretch"), default="crop")
    gen.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    gen.add_argument("--out", required=True, help="out.png for images, out.mp4 for videos")
    gen.add_argument("--save-tokens", help="also write the sampled tokens to this .safetensors file")
    speed = gen.add_argument_group("speed and memory (GPU; see docs/PERFORMANCE.md)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the layers (faster after ~15 s)")
    speed.add_argument("--low-vram", action="store_true", help="stream layers from host memory (49 frames in 4.3 GiB)")
    speed.add_argument("--blocks-on-gpu", type=_count, default=0,
                       help="with --low-vram: how many layers stay on the GPU (the rest stream; default 0)")
    speed.add_argument("--weight-dtype", default="default", choices=list(STORAGE_DTYPES),
                       help="weight storage as ComfyUI's UNETLoader: fp8 layer weights, upcast per layer")
    speed.add_argument("--attention", default="auto", help="auto, flash, cudnn, efficient, math or flex")
    speed.add_argument("--sampler", default="auto", choices=("auto", "torch", "triton"),
                       help="jump-step kernels: triton (fused, CUDA), torch, or auto")
    speed.add_argument("--fp8", action="store_true", help="EXPERIMENTAL fp8 projections (changes results)")
    dl = sub.add_parser("download", help="fetch a real checkpoint from the Hugging Face Hub")
    dl.add_argument("repo", help=f"e.g. {REAL_MODELS[0]}")
    dl.add_argument("--dir", default="models/ursa", help="parent folder (a ComfyUI models/ursa folder works)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "make-tiny":
            from .tiny import make_tiny
            print(f"wrote {make_tiny(args.dir, seed=args.seed, vae=args.vae, shard=args.shard)}")
            return 0
        if args.command == "download":
            return download(args.repo, Path(args.dir))
        from .headless import run_generate
        return run_generate(args)
    except URSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


def download(repo: str, parent: Path) -> int:
    from huggingface_hub import snapshot_download

    target = parent / repo.split("/")[-1]
    started = time.time()
    try:
        path = snapshot_download(repo_id=repo, local_dir=str(target))
    except Exception as exc:  # offline, DNS, HTTP and auth errors all end here
        print(f"error: could not download {repo} from the Hugging Face Hub ({type(exc).__name__}: {exc}).\n"
              f"Are you offline? Download it on a connected machine (huggingface-cli download {repo} "
              f"--local-dir {target}) and copy the folder to {target}.", file=sys.stderr)
        return 3
    print(f"downloaded {repo} to {path} in {time.time() - started:.0f} s")
    return 0
