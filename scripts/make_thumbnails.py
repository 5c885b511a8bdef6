#!/usr/bin/env python3
"""Template-browser thumbnails: ``workflows/<Title>.jpg`` beside each UI workflow.

Each is a REAL output of the headless CLI on the tiny random checkpoint (``--model tiny``: noise-like pictures, not
what the real model makes), so every thumbnail is stamped "PREVIEW - tiny random model" with the template's title.
Videos show three frames side by side. Needs torch (the plugin's venv); about 10 s per template on a CPU.

    .venv/bin/python scripts/make_thumbnails.py
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_workflows  # noqa: E402

ROOT = make_workflows.ROOT
SIZE = (256, 160)       # 16:10 like the browser's cards
BAND = 40               # label band height
LABEL = "PREVIEW - tiny random model"
MAX_BYTES = 16_000


def generate(template: make_workflows.Template, tmp: Path) -> list:
    """Frames (PIL images) of one tiny-model run with the template's prompt and frame count."""
    from PIL import Image
    video = template.id != "ursa_t2i"
    out = tmp / (f"{template.id}.mp4" if video else f"{template.id}.png")
    cmd = [sys.executable, "-m", "ursa_core", "generate", "--model", "tiny", "--prompt", template.title,
           "--frames", "9" if video else "1", "--steps", "4", "--seed", "1", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    if not video:
        return [Image.open(out).convert("RGB")]
    import imageio.v3 as iio
    frames = list(iio.imiter(out))
    picks = [frames[0], frames[len(frames) // 2], frames[-1]]
    return [Image.fromarray(f).convert("RGB") for f in picks]


def compose(frames: list, title: str) -> bytes:
    from PIL import Image, ImageDraw, ImageFont
    canvas = Image.new("RGB", SIZE, (24, 24, 28))
    area_h = SIZE[1] - BAND
    tile_w = SIZE[0] // len(frames)
    for i, frame in enumerate(frames):
        canvas.paste(frame.resize((tile_w - 2, area_h - 2), Image.NEAREST), (i * tile_w + 1, 1))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, area_h + 3), title, fill=(240, 240, 240), font=ImageFont.load_default(13))
    draw.text((6, area_h + 21), LABEL, fill=(255, 190, 80), font=ImageFont.load_default(11))
    for quality in (75, 60, 45, 35):
        buf = io.BytesIO()
        canvas.save(buf, format="JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_BYTES:
            return buf.getvalue()
    raise RuntimeError(f"{title}: thumbnail over {MAX_BYTES} bytes")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for template in make_workflows.TEMPLATES:
            data = compose(generate(template, Path(tmp)), template.title)
            path = make_workflows.OUT_DIR / f"{template.title}.jpg"
            write_bytes_atomic(path, data)
            print(f"{path.relative_to(ROOT)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
