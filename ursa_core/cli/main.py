"""Argument parsing and the exit-code contract: 0 done, 1 an output could not be written, 2 bad input (one line,
before any model loads), 3 download failed, 130 interrupted (Ctrl-C; existing files untouched)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .. import __version__, rules
from ..errors import OutputError, URSAError
from ..files.media import RESIZE_MODES
from ..checkpoint.defaults import CHECKPOINT_REPOS, WEIGHTS_REPOS
from . import arguments

EXIT_OUTPUT, EXIT_INPUT, EXIT_DOWNLOAD, EXIT_INTERRUPTED = 1, 2, 3, 130


def add_sampling_options(parser) -> None:
    """The generation options `ursa generate` and `ursa batch` share (a batch item may override some of them)."""
    parser.add_argument("--model", required=True, help="a model folder in the official layout, or 'tiny'")
    parser.add_argument("--transformer-weights", metavar="FILE",
                        help="fine-tuned transformer weights loaded over --model's (e.g. an RL-tuned "
                             "diffusion_pytorch_model.bin): .safetensors, or a tensors-only .bin/.pt/.pth")
    parser.add_argument("--lora", action="append", default=[], type=arguments.lora_flag, metavar="FILE[:STRENGTH]",
                        help="a LoRA (PEFT adapter folder or its adapter_model.safetensors/.bin, or a single LoRA "
                             "file) at STRENGTH (default 1; finite, -100 to 100); repeat for several")
    parser.add_argument("--negative", default="", help="negative prompt (default: empty, as the reference)")
    parser.add_argument("--frames", type=arguments.FRAMES,
                        help="1 for an image, 1+4k for a video (49 = 4 s at 12 fps); default: the model's (49 for "
                             "FSQ320, 1 for IBQ), 1 for a .png output")
    parser.add_argument("--height", type=arguments.SIZE["height"],
                        help="default: the model's (320 FSQ320, 1024 IBQ1024, 512 IBQ512, 64 tiny)")
    parser.add_argument("--width", type=arguments.SIZE["width"],
                        help="default: the model's (512 FSQ320, 1024 IBQ1024, 512 IBQ512, 64 tiny)")
    parser.add_argument("--steps", type=arguments.STEPS,
                        help="default: the model's (25 for images, 50 for videos, 8 for tiny) or --preset's")
    parser.add_argument("--cfg", dest="guidance", type=arguments.GUIDANCE,
                        help="classifier-free guidance scale (<= 1: one branch, no negative prompt); default: the "
                             "model's (7) or --preset's")
    parser.add_argument("--preset", type=arguments.PRESET, default="none",
                        help="rl_tuned: cfg 1 and 25 steps, as RL-tuned transformers (UDM-GRPO) are sampled; "
                             "--cfg / --steps given still win")
    parser.add_argument("--guidance-trunc", type=arguments.GUIDANCE_TRUNC, default=0.9)
    parser.add_argument("--shift", type=arguments.SHIFT, help="time shift lambda (default: the checkpoint's)")
    parser.add_argument("--motion", type=arguments.MOTION, help="video motion score prefix (default 9.0 for videos)")
    parser.add_argument("--seed", type=arguments.SEED, default=0)
    parser.add_argument("--resize", choices=RESIZE_MODES, default="crop")
    parser.add_argument("--dtype", type=arguments.DTYPE, default="auto", help="auto, fp32, fp16 or bf16")
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
    bat.add_argument("--prompts", required=True, help="a .txt (one prompt a line), .jsonl, GenEval prompts.json, "
                                                      "DPG-Bench prompts.json or a VBench folder of <track>.txt")
    bat.add_argument("--format", choices=FORMATS, default="auto", help="default: from the name")
    bat.add_argument("--outdir", required=True, help="output folder (finished outputs there are skipped)")
    bat.add_argument("--samples", type=arguments.SAMPLES, default=1,
                     help="samples per prompt, seeds seed, seed+1, ... (DPG-Bench: 4, one 2x2 grid)")
    add_sampling_options(bat)


def build_parser() -> argparse.ArgumentParser:
    parser = rules.OneLineParser(prog="ursa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_batch(sub)
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
    tiny.add_argument("--shape", choices=("tiny", "0.6B", "1.7B"), default="tiny",
                      help="keep the transformer structure of a released size (name the folder URSA-0.6B-FSQ320, "
                           "... and it reads that model's defaults)")
    dl = sub.add_parser("download", help="fetch a real checkpoint (or RL-tuned transformer weights) from the "
                                         "Hugging Face Hub")
    dl.add_argument("repo", help="one of " + ", ".join([*CHECKPOINT_REPOS, *WEIGHTS_REPOS]) + " (another id is "
                                 "fetched too, with a warning)")
    dl.add_argument("--dir", default="models/ursa", help="parent folder (a ComfyUI models/ursa folder works)")
    conv = sub.add_parser("convert", help="write the tensors of a .bin/.pt/.pth (tensors-only pickle) as safetensors")
    conv.add_argument("file", help="a tensor file: fine-tuned transformer weights or a LoRA adapter_model.bin")
    conv.add_argument("--out", help="the .safetensors file to write (default: beside FILE, same name)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad argument (one line already printed), --help or --version: return its code
        return int(exc.code or 0)
    try:
        if args.command in ("generate", "batch"):
            from .batch_command import run_batch
            from .generate_command import run_generate
            from ..parallel.distributed import finish
            try:
                with arguments.warnings_on_stderr():
                    return (run_generate if args.command == "generate" else run_batch)(args)
            finally:
                finish()  # leave torchrun's process group, if this run joined one
        from . import tools
        return {"decode": tools.run_decode, "make-tiny": tools.run_make_tiny, "download": tools.run_download,
                "convert": tools.run_convert}[args.command](args)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except URSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
