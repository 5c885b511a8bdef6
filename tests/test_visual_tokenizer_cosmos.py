import itertools
import math

import pytest
import torch

from ursa_core.errors import CheckpointError, InputError
from ursa_core.files.safetensors_io import WEIGHTS_NAME, load_state_dict, save_state_dict
from ursa_core.visual_tokenizer import haar
from ursa_core.visual_tokenizer.loading import load_visual_tokenizer, write_tiny_visual_tokenizer


def _naive_dwt(x: torch.Tensor) -> torch.Tensor:
    """One Haar level by explicit sums over every 2x2x2 cube (even sizes), float64."""
    b, c, t, h, w = x.shape
    out = torch.zeros(b, 8 * c, t // 2, h // 2, w // 2, dtype=torch.float64)
    for band, (bt, bh, bw) in enumerate(itertools.product((0, 1), repeat=3)):
        for dt, dh, dw in itertools.product((0, 1), repeat=3):
            sign = (-1) ** (bt * dt + bh * dh + bw * dw)
            out[:, band * c:(band + 1) * c] += sign * x[:, :, dt::2, dh::2, dw::2]
    # (1/sqrt2)^3 per tap product, then the level scale 1/(2 sqrt2): 1/8 overall.
    return out / 8


@pytest.mark.parametrize("shape", [(1, 3, 4, 8, 8), (2, 2, 2, 6, 10), (1, 24, 4, 4, 2)])
def test_haar_matches_naive_and_inverts(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    y = haar.haar_dwt3d(x)
    assert torch.allclose(y, _naive_dwt(x), atol=1e-12, rtol=0)
    assert torch.allclose(haar.haar_idwt3d(y), x, atol=1e-12, rtol=0)


def test_haar_two_levels_and_odd_reflect_pad():
    x = torch.randn(1, 3, 8, 16, 16, dtype=torch.float64)
    y = haar.patchify(x, 2)
    assert y.shape == (1, 192, 2, 4, 4)
    assert torch.allclose(haar.unpatchify(y, 2), x, atol=1e-12, rtol=0)
    odd = torch.randn(1, 1, 3, 2, 2, dtype=torch.float64)  # T padded by reflecting frame 1 after frame 2
    padded = torch.cat([odd, odd[:, :, 1:2]], 2)
    assert torch.allclose(haar.haar_dwt3d(odd), _naive_dwt(padded), atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_tiny_visual_tokenizer(tmp_path_factory.mktemp("vae") / "vae", "fsq")
    return folder, load_visual_tokenizer(folder)


@pytest.mark.parametrize("frames,latents", [(1, 1), (5, 2), (9, 3), (49, 13)])
def test_latent_shape_rule(tiny, frames, latents):
    assert tiny[1].latent_shape(frames, 320, 512) == (latents, 40, 64)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_roundtrip_shapes(tiny, frames):
    model = tiny[1]
    pixels = torch.rand(2, 3, frames, 32, 48) * 2 - 1
    ids = model.encode(pixels)
    assert ids.shape == (2, (frames - 1) // 4 + 1, 4, 6) and ids.dtype == torch.int64
    out = model.decode(ids)
    assert out.shape == (2, 3, frames, 32, 48)
    assert torch.isfinite(out).all()


def test_49_frames_small(tiny):
    ids = tiny[1].encode(torch.rand(1, 3, 49, 8, 8) * 2 - 1)
    assert ids.shape == (1, 13, 1, 1)
    assert tiny[1].decode(ids).shape == (1, 3, 49, 8, 8)


@pytest.mark.parametrize("frames,height,width,named", [(4, 32, 32, "frames=4"), (0, 32, 32, "frames=0"),
                                                       (5, 30, 32, "height=30"), (5, 32, 12, "width=12")])
def test_bad_sizes_name_the_value(tiny, frames, height, width, named):
    with pytest.raises(InputError, match=named):
        tiny[1].latent_shape(frames, height, width)
    with pytest.raises(InputError, match=named):
        tiny[1].encode(torch.zeros(1, 3, max(frames, 1) if frames else 0, height, width))


def test_code_table_and_interface(tiny):
    model = tiny[1]
    assert (model.kind, model.temporal_stride, model.spatial_stride, model.codebook_size) == ("fsq", 4, 8, 64000)
    assert model.code_table().shape == (64000, 6)


def test_missing_and_misshapen_keys_are_named(tiny, tmp_path):
    folder, _ = tiny
    state = load_state_dict(folder)
    key = "decoder.up_blocks.0.upsamplers.0.conv3.weight"
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_state_dict({k: v for k, v in state.items() if k != key}, tmp_path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_visual_tokenizer(tmp_path)
    save_state_dict({**state, key: state[key][:, :1]}, tmp_path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_visual_tokenizer(tmp_path)


def test_missing_config_and_weights_name_the_file(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_visual_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text((tiny[0] / "config.json").read_text())
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME.replace(".", r"\.")):
        load_visual_tokenizer(tmp_path)


def test_official_key_structure():
    from ursa_core.visual_tokenizer.cosmos import CosmosFSQTokenizer
    with torch.device("meta"):
        model = CosmosFSQTokenizer({})
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Numbers from the reference's default config (spec §3.2: 104,669,558 parameters).
    assert sum(math.prod(s) for s in shapes.values()) == 104_669_558
    assert shapes["encoder.conv_in.0.weight"] == (128, 192, 1, 3, 3)
    assert shapes["encoder.mid_block.attentions.0.1.to_q.weight"] == (512, 512)
    assert shapes["decoder.conv_out.1.weight"] == (192, 192, 3, 1, 1)
    assert shapes["quant_conv.weight"] == (6, 16, 1, 1, 1)
