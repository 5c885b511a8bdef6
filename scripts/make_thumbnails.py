#!/usr/bin/env python3
"""Template-browser thumbnails: ``workflows/<Title>.jpg`` beside each UI workflow.

Each is a REAL output of the headless CLI on the tiny random checkpoint (``--model tiny``: noise-like pictures, not
what the real model makes), so every thumbnail is stamped "PREVIEW - tiny random model" with the template's title.
Videos show three frames side by side; the LoRA template's run adds a random LoRA made for the tiny checkpoint. The
paint-with-a-mask templates show before | after (``ursa_core.repaint`` on a drawn test picture, the repainted tokens
outlined): with random weights the point is which region changed. Needs torch (the plugin's venv); about 10 s per
template on a CPU.

    .venv/bin/python scripts/make_thumbnails.py [TEMPLATE_ID ...]     # all templates, or only these
    .venv/bin/python scripts/make_thumbnails.py --before-after out/before_after   # also full-size PNGs
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


# Paint-with-a-mask templates: tokenizer, source frames and size, and what is repainted (mask box x0, y0, x1, y1 in
# source pixels, or outpaint L, R, T, B), as their workflows do on a picture of their own.
REPAINTS = {
    "ursa_inpaint_image": dict(vae="ibq", frames=1, size=(128, 128), box=(40, 48, 96, 96), feather=8),
    "ursa_outpaint_image": dict(vae="fsq", frames=1, size=(96, 80), outpaint=(16, 16, 0, 0), feather=8),
    "ursa_inpaint_video": dict(vae="fsq", frames=9, size=(128, 80), box=(48, 24, 88, 64), feather=8),
    "ursa_reroll_region": dict(vae="fsq", frames=9, size=(128, 80), box=(40, 16, 96, 56), strength=0.5),
}


def test_picture(frames: int, height: int, width: int):
    """IMAGE [F, H, W, 3]: a sky gradient, a sun that moves from frame to frame, green hills: a picture whose kept
    part is easy to recognise next to the noise random weights paint."""
    import torch
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    t = torch.linspace(0, 1, frames).view(frames, 1, 1)
    sky = torch.stack([0.35 + 0.3 * y, 0.55 + 0.3 * y, 0.95 - 0.2 * y], -1).expand(frames, height, width, 3)
    sun = ((x - 0.25 - 0.5 * t) ** 2 * (width / height) ** 2 + (y - 0.3) ** 2 < 0.02).unsqueeze(-1)
    hills = (y > 0.65 + 0.08 * torch.sin(9 * x)).unsqueeze(-1)
    picture = torch.where(sun, torch.tensor([1.0, 0.85, 0.3]), sky)
    return torch.where(hills, torch.tensor([0.25, 0.6, 0.3]) * (1.2 - y.unsqueeze(-1)), picture).contiguous()


def repaint_before_after(template: make_workflows.Template, tmp: Path):
    """(before, after, changed) frames [F, H, W, 3] of a tiny-model repaint as the template makes it: the source,
    the result (composited where the template composites) and, white, the tokens that differ from the source's;
    and the repainted tokens' box in output pixels (x0, y0, x1, y1)."""
    import torch
    import ursa_core as ursa
    from ursa_core import rules
    from ursa_core.checkpoint.tiny import make_tiny
    from ursa_core.visual_tokenizer.canvas import composite, repaint_weight
    from ursa_core.sampling.repaint import build_canvas, encode_canvas

    spec = REPAINTS[template.id]
    folder = tmp / f"tiny-{spec['vae']}"
    if not folder.is_dir():
        make_tiny(folder, seed=0, vae=spec["vae"])
    model = ursa.load(folder, device="cpu", dtype="fp32")
    g = model.geometry
    width, height = spec["size"]
    motion = 9.0 if spec["frames"] > 1 else None
    mask = None
    if "box" in spec:
        x0, y0, x1, y1 = spec["box"]
        mask = torch.zeros(1, height, width)
        mask[:, y0:y1, x0:x1] = 1.0
    if template.id == "ursa_reroll_region":  # a clip made first, then a region of its tokens re-rolled
        source = ursa.generate(model, "a bird", frames=spec["frames"], height=height, width=width, steps=4, seed=3,
                               motion=motion).tokens
        before = ursa.decode_tokens(model, source)
    else:
        before = test_picture(spec["frames"], height, width)
        canvas = build_canvas(before, mask, spec.get("outpaint"))
        source, _ = encode_canvas(model, canvas, canvas.size[1], canvas.size[0])
        mask, before = canvas.mask, canvas.pixels
    run = ursa.repaint(model, "a bird", tokens=source, mask=mask, strength=spec.get("strength", 1.0), steps=4,
                       seed=1, motion=motion)
    after = ursa.decode_tokens(model, run.tokens)
    start = torch.tensor(run.settings["schedule_start"], dtype=torch.float64)  # per frame, or the token map
    tokens_changed = (start.view(-1, 1, 1) if start.ndim == 1 else start).expand(run.tokens.shape[1:]) < 1
    # White where the token differs from the source token (random decoders spread any change over the frame).
    owner = [rules.latent_frame_of(p, g.temporal_stride) for p in range(after.shape[0])]
    changed = (run.tokens[0] != source[0])[owner].repeat_interleave(g.spatial_stride, 1) \
        .repeat_interleave(g.spatial_stride, 2).float().unsqueeze(-1).expand_as(after)
    if spec.get("feather") is not None:   # the template's URSA Repaint Composite
        weight = repaint_weight(tokens_changed, after.shape[0], g.temporal_stride, g.spatial_stride, spec["feather"])
        after = composite(before, after, weight)
    if "outpaint" in spec:                # show the picture as loaded, before padding
        left, right, top, bottom = spec["outpaint"]
        before = before[:, top:before.shape[1] - bottom, left:before.shape[2] - right]
    rows, cols = torch.nonzero(tokens_changed.any(0), as_tuple=True)
    s = g.spatial_stride
    box = (int(cols.min()) * s, int(rows.min()) * s, (int(cols.max()) + 1) * s, (int(rows.max()) + 1) * s)
    return before, after, changed, box


def before_after_tiles(template: make_workflows.Template, tmp: Path) -> list:
    """[before, after, changed] (the middle frame of a video), the repainted tokens outlined on after and changed."""
    from PIL import Image, ImageDraw
    *pictures, box = repaint_before_after(template, tmp)
    pick = pictures[0].shape[0] // 2
    tiles = [Image.fromarray((frames[pick].clamp(0, 1) * 255).round().byte().numpy()) for frames in pictures]
    for tile in tiles[1:]:
        ImageDraw.Draw(tile).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=(255, 220, 0))
    if tiles[0].size != tiles[1].size:   # outpainting: the source sits in the middle of the wider canvas
        wide = Image.new("RGB", tiles[1].size, (24, 24, 28))
        wide.paste(tiles[0], ((tiles[1].size[0] - tiles[0].size[0]) // 2, (tiles[1].size[1] - tiles[0].size[1]) // 2))
        tiles[0] = wide
    return tiles


IMAGE_TEMPLATES = ("ursa_t2i", "ursa_t2i_lora")


def tiny_lora(tmp: Path) -> Path:
    """A random single-file LoRA (lora_down/lora_up + alpha) on every projection of the tiny checkpoint."""
    import torch
    from safetensors.torch import save_file

    from ursa_core.checkpoint.tiny import tiny_model_dir
    from ursa_core.lora.patch import projection_shapes
    from ursa_core.model.config import TransformerConfig

    config = TransformerConfig.from_json(tiny_model_dir() / "transformer" / "config.json")
    gen, state = torch.Generator().manual_seed(7), {}
    for name, (out, inp) in projection_shapes(config).items():
        state[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(4, inp, generator=gen)
        state[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(out, 4, generator=gen) / out ** 0.5
        state[f"diffusion_model.{name}.alpha"] = torch.tensor(4.0)
    path = tmp / "tiny_lora.safetensors"
    save_file(state, str(path))
    return path


def generate(template: make_workflows.Template, tmp: Path) -> list:
    """Frames (PIL images) of one tiny-model run with the template's prompt and frame count."""
    from PIL import Image
    video = template.id not in IMAGE_TEMPLATES
    out = tmp / (f"{template.id}.mp4" if video else f"{template.id}.png")
    cmd = [sys.executable, "-m", "ursa_core", "generate", "--model", "tiny", "--prompt", template.title,
           "--frames", "9" if video else "1", "--steps", "4", "--seed", "1", "--out", str(out)]
    if template.id == "ursa_t2i_lora":
        cmd += ["--lora", f"{tiny_lora(tmp)}:0.8"]
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


def save_before_after(tiles: list, template: make_workflows.Template, out: Path) -> Path:
    """One PNG: before | after | changed pixels side by side, scaled 4x (nearest) so tokens stay visible."""
    from PIL import Image
    w, h = tiles[0].size
    sheet = Image.new("RGB", (len(tiles) * (w + 4) - 4, h), (24, 24, 28))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * (w + 4), 0))
    sheet = sheet.resize((sheet.size[0] * 4, sheet.size[1] * 4), Image.NEAREST)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{template.id}_before_after.png"
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return path


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-after", type=Path, metavar="DIR",
                        help="also write each paint-with-a-mask template's before | after as a PNG in DIR")
    parser.add_argument("only", nargs="*", metavar="TEMPLATE_ID", help="template ids (default: all)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for template in make_workflows.TEMPLATES:
            if args.only and template.id not in args.only:
                continue
            if template.id in REPAINTS:
                frames = before_after_tiles(template, Path(tmp))
                if args.before_after:
                    print(save_before_after(frames, template, args.before_after))
            else:
                frames = generate(template, Path(tmp))
            data = compose(frames, template.title)
            path = make_workflows.OUT_DIR / f"{template.title}.jpg"
            write_bytes_atomic(path, data)
            print(f"{path.relative_to(ROOT)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
