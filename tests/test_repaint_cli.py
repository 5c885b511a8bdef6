"""`ursa generate` painting with a mask, in-process on the tiny checkpoint: what is not masked is the source (tokens
and, with --composite, pixels), a mask of another size is one warning line, a video is trimmed to --frames."""
import numpy as np
import pytest
import torch
from PIL import Image

from ursa_core import cli
from ursa_core.checkpoint.loader import load_model
from ursa_core.files.media import count_video_frames, load_image, write_mp4
from ursa_core.files.token_io import load_tokens
from ursa_core.visual_tokenizer.codec import encode_images


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("repaint_cli")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 96, 3)) * 255).astype("uint8")).save(root / "in.png")
    mask = np.zeros((32, 48), "uint8")
    mask[4:12, 10:20] = 255                  # drawn at half size: pixels 8..23 x 20..39 of the image
    Image.fromarray(mask).save(root / "mask_half.png")
    write_mp4(torch.rand(13, 64, 64, 3), root / "in.mp4")
    moving = torch.zeros(13, 64, 64, 3)
    moving[5:, 40:, 40:] = 1.0               # from pixel frame 5 on: latent frames 2 and 3 only
    write_mp4(moving, root / "mask.mp4")
    return root


def generate(tmp_path, *argv):
    return cli.main(["generate", "--prompt", "a red fox", "--steps", "2", "--seed", "4", *map(str, argv)])


def test_inpaint_keeps_the_unmasked_tokens_and_warns_once_for_the_mask_size(tiny_dir, files, tmp_path, capsys):
    code = generate(tmp_path, "--model", tiny_dir, "--image", files / "in.png", "--mask", files / "mask_half.png",
                    "--out", tmp_path / "out.png", "--save-tokens", tmp_path / "tokens", "--composite", 8)
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert warnings == ["warning: the mask is 48x32 but the image is 96x64: resized to the image (nearest)"]
    tokens, _ = load_tokens(tmp_path / "tokens.safetensors")
    assert tokens.shape == (1, 1, 8, 12)     # the image's own size: 96 x 64
    model = load_model(tiny_dir, device="cpu", dtype="fp32")
    source = encode_images(model.visual_tokenizer, load_image(files / "in.png"), 96, 64)
    repainted = torch.zeros(1, 1, 8, 12, dtype=torch.bool)
    repainted[..., 1:3, 2:5] = True          # rows 8..23, columns 20..39: tokens 1..2 x 2..4
    assert torch.equal(tokens[~repainted], source[~repainted])
    assert not torch.equal(tokens[repainted], source[repainted])
    written = np.asarray(Image.open(tmp_path / "out.png"))
    original = np.asarray(Image.open(files / "in.png"))
    far = np.ones((64, 96), bool)
    far[:33, 7:49] = False                   # the repainted tokens (8..23 x 16..39) and 8 feathered pixels
    assert np.array_equal(written[far], original[far]) and not np.array_equal(written[~far], original[~far])


def test_a_video_mask_repaints_only_its_latent_frames_and_frames_trim_the_clip(tiny_dir, files, tmp_path, capsys):
    code = generate(tmp_path, "--model", tiny_dir, "--video", files / "in.mp4", "--mask", files / "mask.mp4",
                    "--frames", 9, "--out", tmp_path / "out.mp4", "--save-tokens", tmp_path / "tokens")
    assert code == 0, capsys.readouterr().err
    assert count_video_frames(tmp_path / "out.mp4") == 9
    tokens, _ = load_tokens(tmp_path / "tokens.safetensors")
    model = load_model(tiny_dir, device="cpu", dtype="fp32")
    from ursa_core.files.media import load_video
    source = encode_images(model.visual_tokenizer, load_video(files / "in.mp4", 9), 64, 64)
    assert tokens.shape == source.shape == (1, 3, 8, 8)
    assert torch.equal(tokens[:, :2], source[:, :2])           # latent frames 0 and 1: pixel frames 0..4, unmasked
    assert torch.equal(tokens[:, 2, :5], source[:, 2, :5]) and torch.equal(tokens[:, 2, :, :5], source[:, 2, :, :5])
    assert not torch.equal(tokens[:, 2, 5:, 5:], source[:, 2, 5:, 5:])


def test_outpaint_makes_the_padded_canvas(tiny_dir, files, tmp_path, capsys):
    code = generate(tmp_path, "--model", tiny_dir, "--image", files / "in.png", "--outpaint", "16,16,0,8",
                    "--out", tmp_path / "wide.png")
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "wide.png").size == (128, 72)


def test_a_video_repainted_into_pngs_checks_every_frames_path_first(tiny_dir, files, tmp_path, capsys, monkeypatch):
    """Without --frames the frame count comes from the video, after the flags' own --out check: each frame's PNG
    path is checked then, still before the model loads."""
    from ursa_core.cli import generate_command

    monkeypatch.setattr(generate_command, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    (tmp_path / "out_00012.png").mkdir()
    code = generate(tmp_path, "--model", tiny_dir, "--video", files / "in.mp4", "--strength", 0.5,
                    "--out", tmp_path / "out.png")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: --out {tmp_path / 'out_00012.png'}: is a folder; give a file name (e.g. " \
                                f"{tmp_path / 'out_00012.png' / 'out.png'})"
