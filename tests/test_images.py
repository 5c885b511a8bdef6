"""Reading image files (issue 17, items 7 and 8): every mode Pillow opens becomes RGB in 0..1 with the right range,
and an image over the pixel limit is one line naming its size and the limit, read from the header, before any
model loads. `files/image_file.read_rgb` is the one reader (`media.load_image` hands its pixels on as a tensor):
`--image`/`--last-image`, `ursa batch` items and `ursa_core.load_image` all go through it."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from PIL import Image

import ursa_core
from ursa_core import cli, rules
from ursa_core.cli import generate_command as cli_generate
from ursa_core.errors import InputError
from ursa_core.files import image_file
from ursa_core.files.media import load_image

from image_files import huge_png, png_bytes, rows16, truncated_png


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


HALF16 = 32768 / 65535


# Each case: (file maker, the expected [H, W, 3] pixels or a per-channel value). Values chosen so that reading the
# wrong range (16-bit as 8-bit, 0..255 floats, alpha ignored) gives a visibly different answer.
def _gray16_png(tmp):
    p = tmp / "gray16.png"   # the issue's file: mid-grey 16-bit, which turned white (mean 0.998)
    p.write_bytes(png_bytes(8, 8, 16, 0, rows16(np.full((8, 8), 32768))))
    return p, np.full((8, 8, 3), HALF16)


def _gray16_gradient_png(tmp):
    values = np.linspace(0, 65535, 64).round().reshape(8, 8)
    p = tmp / "grad16.png"
    p.write_bytes(png_bytes(8, 8, 16, 0, rows16(values)))
    return p, np.repeat((values / 65535)[..., None], 3, axis=2)


def _gray16_transparent_png(tmp):
    values = np.full((8, 8), 40000)
    values[:, :4] = 1234     # the tRNS value: those pixels are transparent -> black
    p = tmp / "gray16_trns.png"
    p.write_bytes(png_bytes(8, 8, 16, 0, rows16(values), ((b"tRNS", struct.pack(">H", 1234)),)))
    expected = np.repeat((values / 65535)[..., None], 3, axis=2)
    expected[:, :4] = 0
    return p, expected


def _rgb16_png(tmp):
    values = np.tile(np.array([0x8000, 0x4000, 0xFFFF]), (8, 8, 1))
    p = tmp / "rgb16.png"
    p.write_bytes(png_bytes(8, 8, 16, 2, rows16(values)))
    return p, np.tile(np.array([128, 64, 255]) / 255, (8, 8, 1))   # Pillow keeps the high byte of each sample


def _i16b_tiff(tmp):
    img = Image.frombytes("I;16B", (4, 2), np.full((2, 4), 49152, ">u2").tobytes())
    p = save(img, tmp / "i16b.tif")
    with Image.open(p) as check:
        assert check.mode == "I;16B"
    return p, np.full((2, 4, 3), 49152 / 65535)


def _i16_tiff(tmp):
    p = save(Image.fromarray(np.full((2, 4), 16384, np.uint16)), tmp / "i16.tif")
    return p, np.full((2, 4, 3), 16384 / 65535)


def _i32_tiff(tmp):
    values = np.array([[0, 32768, 65535, 70000], [-5, 100, 2 ** 31 - 1, 13107]], np.int32)
    p = save(Image.fromarray(values), tmp / "i32.tif")
    with Image.open(p) as check:
        assert check.mode == "I"
    return p, np.repeat(np.clip(values / 65535, 0, 1)[..., None], 3, axis=2)


def _pgm16(tmp):   # Pillow opens 16-bit PGM as mode I: the same 16-bit scale must apply
    p = save(Image.fromarray(np.full((2, 4), 32768, np.uint16)), tmp / "gray16.pgm")
    with Image.open(p) as check:
        assert check.mode == "I"
    return p, np.full((2, 4, 3), HALF16)


def _float_tiff(tmp):
    values = np.array([[0.25, 0.5, 1.5, -0.5], [0.0, 1.0, np.nan, 0.75]], np.float32)
    p = save(Image.fromarray(values), tmp / "f.tif")
    expected = np.clip(np.nan_to_num(values, nan=0.0), 0, 1)
    return p, np.repeat(expected[..., None], 3, axis=2)


def _bilevel_png(tmp):
    bits = (np.indices((8, 8)).sum(0) % 2).astype(bool)
    p = save(Image.fromarray(bits), tmp / "bits.png")
    with Image.open(p) as check:
        assert check.mode == "1"
    return p, np.repeat(bits[..., None].astype(float), 3, axis=2)


def _l_png(tmp):
    return save(Image.new("L", (4, 4), 77), tmp / "l.png"), np.full((4, 4, 3), 77 / 255)


def _la_png(tmp):
    return save(Image.new("LA", (4, 4), (200, 128)), tmp / "la.png"), np.full((4, 4, 3), 200 / 255 * 128 / 255)


def _p_png(tmp):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 255, 128, 0] + [0] * 762)
    return save(img, tmp / "p.png"), np.tile(np.array([255, 128, 0]) / 255, (4, 4, 1))


def _p_transparent_png(tmp):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 255, 0, 255, 128, 0] + [0] * 762)
    img.paste(0, (0, 0, 2, 4))        # left half: index 0 (green in the palette), declared transparent
    p = save(img, tmp / "p_trns.png", transparency=0)
    expected = np.tile(np.array([255, 128, 0]) / 255, (4, 4, 1))
    expected[:, :2] = 0               # transparent -> black, not the palette's green
    return p, expected


def _rgb_png(tmp):
    return save(Image.new("RGB", (4, 4), (10, 20, 30)), tmp / "rgb.png"), np.full((4, 4, 3), [10 / 255, 20 / 255,
                                                                                              30 / 255])


def _rgba_png(tmp):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[:, 0] = (200, 100, 50, 255)   # opaque: unchanged
    rgba[:, 1] = (200, 100, 50, 0)     # transparent: black (its stored colour is not shown by any viewer)
    rgba[:, 2] = (200, 100, 50, 51)    # 20 % opaque: 20 % of the colour over black
    p = save(Image.fromarray(rgba, "RGBA"), tmp / "rgba.png")
    rgb = rgba[..., :3] / 255 * (rgba[..., 3:] / 255)
    return p, rgb


def _cmyk_tiff(tmp):
    img = Image.new("CMYK", (4, 2), (0, 255, 255, 0))   # no black, full magenta + yellow: red
    img.paste((0, 0, 0, 0), (0, 0, 2, 2))                 # no ink: white
    expected = np.zeros((2, 4, 3))
    expected[:, :2] = 1
    expected[:, 2:] = (1, 0, 0)
    return save(img, tmp / "cmyk.tif"), expected


def _ycbcr_tiff(tmp):
    img = Image.new("YCbCr", (4, 2), (128, 128, 128))     # neutral: Y 128 is mid grey
    p = save(img, tmp / "ycbcr.tif")
    with Image.open(p) as check:
        assert check.mode == "YCbCr"
    return p, np.full((2, 4, 3), 128 / 255)


def _lab_tiff(tmp):
    p = save(Image.new("LAB", (4, 2), (0, 128, 128)), tmp / "lab.tif")   # L* = 0: black
    return p, np.zeros((2, 4, 3))


MODES = {"I;16 png": _gray16_png, "I;16 png gradient": _gray16_gradient_png,
         "I;16 png tRNS": _gray16_transparent_png, "RGB 16-bit png": _rgb16_png, "I;16B tiff": _i16b_tiff,
         "I;16 tiff": _i16_tiff, "I tiff": _i32_tiff, "I pgm 16-bit": _pgm16, "F tiff": _float_tiff,
         "1 png": _bilevel_png, "L png": _l_png, "LA png": _la_png, "P png": _p_png,
         "P png transparency": _p_transparent_png, "RGB png": _rgb_png, "RGBA png": _rgba_png,
         "CMYK tiff": _cmyk_tiff, "YCbCr tiff": _ycbcr_tiff, "LAB tiff": _lab_tiff}


@pytest.mark.parametrize("make", MODES.values(), ids=MODES.keys())
def test_every_mode_reads_as_rgb_in_0_1(tmp_path, make):
    path, expected = make(tmp_path)
    pixels = load_image(path)
    assert pixels.dtype == torch.float32 and pixels.shape == (1, *expected.shape)
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 1
    tolerance = 2 / 255 if path.suffix == ".tif" and "lab" in path.name else 1e-6
    np.testing.assert_allclose(pixels[0].numpy(), expected, atol=tolerance)


def test_the_issue_16_bit_grey_png_is_mid_grey_not_white(tmp_path):
    path, _ = _gray16_png(tmp_path)
    pixels = load_image(path)
    assert abs(float(pixels.mean()) - 0.5) < 1e-3 and float((pixels == 1).float().mean()) == 0


def test_library_reads_images_with_the_same_reader(tmp_path):
    path, expected = _gray16_png(tmp_path)
    assert ursa_core.load_image is load_image
    np.testing.assert_allclose(ursa_core.load_image(path)[0].numpy(), expected, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (6, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6   # "rotate 90 CW to display"
    path = save(img, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    assert load_image(path).shape == (1, 6, 2, 3)


def test_cli_conditions_on_the_16_bit_image_as_read(tmp_path, tiny_dir, tiny_model):
    """`ursa generate --image` with the issue's 16-bit PNG holds the tokens of a mid-grey frame, not of white."""
    from ursa_core.visual_tokenizer.codec import encode_images
    from ursa_core.files.token_io import load_tokens

    path, _ = _gray16_png(tmp_path)
    tokens_file = tmp_path / "t.safetensors"
    assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--steps", "1", "--frames", "5",
                     "--image", str(path), "--save-tokens", str(tokens_file), "--out", str(tmp_path / "o.mp4")]) == 0
    held = load_tokens(tokens_file)[0][:, 0]
    grey, white = (encode_images(tiny_model.visual_tokenizer, torch.full((1, 8, 8, 3), v), 64, 64)[:, 0]
                   for v in (HALF16, 1.0))
    assert not torch.equal(grey, white)
    assert torch.equal(held, grey)


# --- the pixel limit (item 8) ---------------------------------------------------------------------------------------

def test_limit_is_ursas_own_and_below_pillows_default():
    """ursa's limit holds whatever a host program set Pillow's to; with Pillow's default, Pillow never warns first;
    it is twice the largest frame per side."""
    assert image_file.MAX_IMAGE_PIXELS == 8192 * 8192 and image_file.MAX_IMAGE_SIDE == 2 * rules.MAX_SIZE
    assert image_file.MAX_IMAGE_PIXELS < 89478485   # PIL.Image.MAX_IMAGE_PIXELS's default (its warning threshold)


@pytest.mark.parametrize("maker,size", [(huge_png, "20000x20000"), (truncated_png, "9000x9000")])
def test_too_many_pixels_is_one_input_error_naming_size_and_limit(tmp_path, recwarn, maker, size):
    path = maker(tmp_path / "big.png")
    with pytest.raises(InputError) as exc:
        load_image(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and size in message
    assert f"{image_file.MAX_IMAGE_PIXELS:,}" in message and "8192x8192" in message
    assert not [w for w in recwarn if "decompression" in str(w.message).lower()]


def test_limit_holds_when_pillows_is_switched_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InputError, match="20000x20000"):
        load_image(huge_png(tmp_path / "big.png"))


def test_the_limit_counts_pixels_inclusively():
    image_file.check_pixels(8192, 8192)
    image_file.check_pixels(2 ** 20, 64)
    with pytest.raises(InputError, match="8193x8192 = 67,117,056 pixels"):
        image_file.check_pixels(8193, 8192)


def test_cli_refuses_a_20000_square_png_in_one_line_before_loading(tmp_path, capsys, monkeypatch, tiny_dir):
    def must_not_load(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_generate, "load_model", must_not_load)
    path = huge_png(tmp_path / "big.png")
    code = cli.main(["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--frames", "5", "--image",
                     str(path), "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "20000x20000" in lines[0] and "8192x8192" in lines[0]
