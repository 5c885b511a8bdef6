"""MP4 files reproduce byte for byte (issue 17, item 13): the same frames, or the same tokens decoded, give the same
bytes when written again in the same process and in another process.

x264 as configured before read memory it had not written (B-frames with macroblock-tree rate control): what other
work left in freed memory changed its decisions, so a clip differed from its own re-encode only after the process
had done something else. The writes here therefore allocate and free buffers of random bytes between clips, as a
long `ursa batch` run does with its model; without them the old writer also reproduced.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ursa_core import cli
from ursa_core.files.media import write_mp4

ROOT = Path(__file__).resolve().parents[1]
# (height, width): sizes at which the old writer differed most often (17 % of re-encodes), and the model's own.
SIZES = ((128, 64), (192, 64), (64, 72), (96, 96), (64, 64), (320, 512))
CLIPS = 8


def clip_frames(size: tuple[int, int], clip: int) -> torch.Tensor:
    frames = 5 + 4 * (clip % 3) if size != (320, 512) else 9
    return torch.rand(frames, *size, 3, generator=torch.Generator().manual_seed(clip))


def churn(seed: int) -> None:
    """Allocate and free ~5 MB of random bytes: freed memory that holds something else than last time."""
    sizes = torch.randint(1_000, 200_000, (50,), generator=torch.Generator().manual_seed(seed)).tolist()
    junk = [os.urandom(n) for n in sizes]
    del junk


def clip_hashes(folder: Path, repeats: int = 1, sizes=SIZES, clips: int = CLIPS) -> dict[str, list[str]]:
    """sha256 of every clip's MP4, written `repeats` times, with churn before every write."""
    hashes: dict[str, list[str]] = {}
    path = folder / "clip.mp4"
    for repeat in range(repeats):
        for size in sizes:
            for clip in range(clips if size != (320, 512) else 2):
                churn(repeat * 1000 + clip)
                write_mp4(clip_frames(size, clip), path, fps=12.0)
                hashes.setdefault(f"{size[0]}x{size[1]}-{clip}", []).append(hashlib.sha256(path.read_bytes())
                                                                           .hexdigest())
    return hashes


def test_same_frames_same_mp4_bytes_in_one_process(tmp_path):
    hashes = clip_hashes(tmp_path, repeats=3)
    differing = sorted(key for key, seen in hashes.items() if len(set(seen)) > 1)
    assert differing == [], f"{len(differing)} of {len(hashes)} clips changed bytes when written again: {differing}"


def test_same_frames_same_mp4_bytes_in_two_processes(tmp_path):
    script = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
              "from test_video_bytes import clip_hashes; print(json.dumps(clip_hashes(Path(sys.argv[2]), clips=4)))")
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        result = subprocess.run([sys.executable, "-c", script, str(ROOT / "tests"), str(folder)], capture_output=True,
                                text=True, timeout=300, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout))
    here = clip_hashes(tmp_path, clips=4)
    assert runs[0] == runs[1] == here


def test_same_tokens_decode_to_the_same_mp4_bytes(tmp_path, tiny_dir):
    """`ursa generate --save-tokens`, then `ursa decode` twice (other clips decoded in between): identical files."""
    tokens = []
    for seed, (height, width) in enumerate(((64, 64), (128, 64), (64, 96))):
        path = tmp_path / f"t{seed}.safetensors"
        assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--steps", "1", "--frames", "9",
                         "--height", str(height), "--width", str(width), "--seed", str(seed), "--save-tokens",
                         str(path), "--out", str(tmp_path / f"g{seed}.mp4")]) == 0
        tokens.append(path)
    written = {}
    for repeat in range(2):
        for path in tokens:
            churn(repeat)
            out = tmp_path / f"{path.stem}-{repeat}.mp4"
            assert cli.main(["decode", "--tokens", str(path), "--out", str(out)]) == 0
            written.setdefault(path.stem, []).append(out.read_bytes())
    for stem, (first, second) in written.items():
        assert first == second, stem
        assert first == (tmp_path / f"g{stem[1:]}.mp4").read_bytes(), "generate wrote other bytes than decode"
