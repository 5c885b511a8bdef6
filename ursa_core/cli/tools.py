"""`ursa decode`, `ursa make-tiny`, `ursa download`: the jobs around generation."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import rules
from ..checkpoint.tiny import model_folder
from ..errors import InputError
from ..files.atomic import partial_dir, replace_dir
from ..files.media import write_frames
from ..files.token_io import check_identity, load_tokens, tokenizer_identity
from ..visual_tokenizer.codec import decode_images
from .exits import EXIT_DOWNLOAD
from .generate_command import check_output_path, report_written


def run_decode(args: argparse.Namespace) -> int:
    """Token file -> PNG/MP4 with the visual tokenizer of the model that made it (only vae/ is loaded)."""
    from ..visual_tokenizer.loading import load_visual_tokenizer

    started = time.time()
    tokens, meta = load_tokens(args.tokens)
    identity = meta.get("tokenizer") or {}
    if not args.model and not meta.get("model"):
        raise InputError(f"--tokens {args.tokens}: the file does not name its model; pass --model DIR")
    stride = int(identity.get("temporal_stride") or 4)
    check_output_path(args.out, tokens.shape[0] * rules.pixel_frames(tokens.shape[1], stride))
    folder = model_folder(args.model or meta["model"])
    if not folder.is_dir() and args.model:
        raise InputError(f"--model {folder}: model folder not found")
    if not folder.is_dir():
        raise InputError(f"--tokens {args.tokens}: the model that made them, {folder}, is not there (moved or "
                         f"deleted?); pass --model with its folder")
    if not (folder / "vae" / "config.json").is_file():
        raise InputError(f"model folder {folder}: has no vae/config.json, so tokens cannot be decoded")
    vq = load_visual_tokenizer(folder / "vae", device=rules.device(args.device))
    check_identity(identity, tokenizer_identity(vq, folder.name), f"the tokens in {args.tokens}")
    images = decode_images(vq, tokens)
    report_written(images, write_frames(images, args.out, fps=float(meta.get("fps", 12.0))), started)
    return 0


def run_make_tiny(args: argparse.Namespace) -> int:
    from ..checkpoint.tiny import make_tiny

    folder = make_tiny(args.dir, seed=args.seed, vae=args.vae, shard=args.shard)
    if not (folder / "model_index.json").is_file():
        raise InputError(f"{folder}: the tiny checkpoint was not written")
    print(f"wrote {folder}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Download into a stable hidden folder beside the target (an interrupted download resumes there), then rename
    the complete folder into place."""
    from huggingface_hub import snapshot_download

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:  # a malformed id is bad input (exit 2), not a failed download
        validate_repo_id(args.repo)
    except HFValidationError as exc:
        raise InputError(f"download {args.repo!r}: not a Hugging Face repo id such as BAAI/URSA-1.7B-FSQ320 "
                         f"({str(exc).splitlines()[0]})") from None
    target = Path(args.dir) / args.repo.split("/")[-1]
    work = partial_dir(target)
    started = time.time()
    try:
        snapshot_download(repo_id=args.repo, local_dir=str(work))
    except Exception as exc:  # offline, DNS, HTTP and auth errors all end here
        print(f"error: could not download {args.repo} from the Hugging Face Hub ({type(exc).__name__}: {exc}).\n"
              f"Are you offline? Download it on a connected machine (hf download {args.repo} "
              f"--local-dir {target}) and copy the folder to {target}.", file=sys.stderr)
        return EXIT_DOWNLOAD
    replace_dir(work, target)
    print(f"downloaded {args.repo} to {target} in {time.time() - started:.0f} s")
    return 0
