"""MP4 writing: reproducibility, speed, size and PSNR of media.write_mp4 with its x264 options and with x264's
defaults (what it used before), on this machine's CPU.

    python benchmarks/bench_mp4.py            # ~1 min on 2 CPU cores
    python benchmarks/bench_mp4.py --quick    # fewer clips and repeats

Reproducibility: clips at the sizes where the old options differed most, each written `--repeats` times in this
process with ~5 MB of random bytes allocated and freed before every write (what a long run's other work leaves in
freed memory: x264 with B-frames and mbtree read memory it had not written). Speed: 49 frames 512x320 (the model's
4 s clip), a smooth moving scene and the same with noise, best and median of `--timings` writes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ursa_core.files import media  # noqa: E402

SETTINGS = {"x264 defaults (before)": {}, "write_mp4 now": dict(media.X264_REPRODUCIBLE)}
SIZES = ((128, 64), (192, 64), (256, 64), (64, 72), (96, 96), (64, 64), (128, 128), (320, 512))


def scene(noise: float, frames: int = 49, height: int = 320, width: int = 512) -> torch.Tensor:
    """A drifting colour wave with a moving disc, plus Gaussian noise of std `noise` (0..1 scale)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), np.float32)
    for t in range(frames):
        wave = np.sin((x[..., None] + 3 * t) / 23 + np.arange(3)) * np.cos((y[..., None] - t) / 17)
        out[t] = 0.5 + 0.25 * wave
        out[t][(x - 100 - 6 * t) ** 2 + (y - 160) ** 2 < 40 ** 2] = (0.9, 0.2, 0.1)
        out[t] += rng.normal(0, noise, (height, width, 3))
    return torch.from_numpy(out.clip(0, 1))


def psnr(path: Path, frames: torch.Tensor) -> float:
    import av

    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)
    mse = ((decoded - media.to_uint8(frames).astype(np.float64)) ** 2).mean()
    return 10 * np.log10(255 ** 2 / mse)


def differing_clips(folder: Path, clips: int, repeats: int) -> tuple[int, int, int]:
    """(clips whose bytes changed, re-encodes that differed from the first, re-encodes) over SIZES x clips."""
    first, changed, rewrites = {}, set(), 0
    for repeat in range(repeats):
        for size in SIZES:
            for clip in range(clips):
                junk = [os.urandom(n) for n in np.random.default_rng(repeat * 997 + clip).integers(1000, 200_000, 50)]
                del junk
                frames = torch.rand(5 + 4 * (clip % 3), *size, 3, generator=torch.Generator().manual_seed(clip))
                path = media.write_mp4(frames, folder / "clip.mp4", fps=12.0)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                rewrites += repeat > 0
                if first.setdefault((size, clip), digest) != digest:
                    changed.add((size, clip, repeat))
    return len({key[:2] for key in changed}), len(changed), rewrites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timings", type=int, default=7, help="writes per speed measurement")
    args = parser.parse_args()
    clips, repeats, timings = (4, 2, 3) if args.quick else (12, 4, args.timings)
    folder = Path(tempfile.mkdtemp(prefix="bench_mp4_"))
    scenes = {"smooth": scene(0.003), "noisy": scene(0.02)}
    print(f"# bench_mp4 on {os.cpu_count()} CPU(s), {time.strftime('%Y-%m-%d')}, torch {torch.__version__}")
    print("| setting | clips changed | re-encodes changed | scene | write 49x512x320 best / median s | KiB | PSNR dB |")
    print("|---|---|---|---|---|---|---|")
    for name, options in SETTINGS.items():
        media.X264_REPRODUCIBLE = options   # the benchmark swaps the writer's options; the product has one set
        changed, rewrites_changed, rewrites = differing_clips(folder, clips, repeats)
        for scene_name, frames in scenes.items():
            seconds = []
            for _ in range(timings):
                start = time.perf_counter()
                path = media.write_mp4(frames, folder / "scene.mp4", fps=12.0)
                seconds.append(time.perf_counter() - start)
            print(f"| {name} | {changed} of {len(SIZES) * clips} | {rewrites_changed} of {rewrites} | {scene_name} | "
                  f"{min(seconds):.3f} / {statistics.median(seconds):.3f} | {path.stat().st_size / 1024:.0f} | "
                  f"{psnr(path, frames):.2f} |", flush=True)


if __name__ == "__main__":
    main()
