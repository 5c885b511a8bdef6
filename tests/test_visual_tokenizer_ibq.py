import pytest
import torch

from ursa_core.errors import CheckpointError, InputError
from ursa_core.files.safetensors_io import load_state_dict, save_state_dict
from ursa_core.visual_tokenizer import IBQTokenizer
from ursa_core.visual_tokenizer.loading import load_visual_tokenizer, write_tiny_visual_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_tiny_visual_tokenizer(tmp_path_factory.mktemp("vae") / "vae", "ibq")
    return folder, load_visual_tokenizer(folder)


def test_interface(tiny):
    model = tiny[1]
    assert isinstance(model, IBQTokenizer)
    assert (model.kind, model.temporal_stride, model.spatial_stride, model.codebook_size) == ("ibq", 1, 16, 512)
    assert torch.equal(model.code_table(), model.quantizer.embedding.weight)
    assert model.latent_shape(1, 1024, 1024) == (1, 64, 64)


@pytest.mark.parametrize("layout", ["5d", "4d"])
def test_roundtrip_shapes(tiny, layout):
    model = tiny[1]
    pixels = torch.rand(2, 3, 1, 32, 48) * 2 - 1
    ids = model.encode(pixels if layout == "5d" else pixels[:, :, 0])
    assert ids.shape == (2, 1, 2, 3) and ids.dtype == torch.int64
    out = model.decode(ids)
    assert out.shape == (2, 3, 1, 32, 48)
    assert torch.isfinite(out).all()


def test_quantize_is_argmax_dot_product(tiny):
    model = tiny[1]
    pixels = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = model.quant_conv(model.encoder(pixels[:, :, 0]))  # [1, D, 2, 2]
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    expected = (vectors @ model.quantizer.embedding.weight.T).argmax(-1)
    assert torch.equal(model.encode(pixels).flatten(), expected)


@pytest.mark.parametrize("frames,height,width,named", [(5, 32, 32, "frames=5"), (1, 40, 32, "height=40"),
                                                       (1, 32, 8, "width=8")])
def test_bad_sizes_name_the_value(tiny, frames, height, width, named):
    with pytest.raises(InputError, match=named):
        tiny[1].latent_shape(frames, height, width)


def test_misshapen_embedding_is_named(tiny, tmp_path):
    folder, _ = tiny
    state = load_state_dict(folder)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_state_dict({**state, "quantizer.embedding.weight": torch.zeros(512, 3)}, tmp_path)
    with pytest.raises(CheckpointError, match=r"quantizer\.embedding\.weight"):
        load_visual_tokenizer(tmp_path)


def test_class_fallback_on_keys(tiny, tmp_path):
    import json
    config = json.loads((tiny[0] / "config.json").read_text())
    del config["_class_name"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_state_dict(load_state_dict(tiny[0]), tmp_path)
    assert isinstance(load_visual_tokenizer(tmp_path), IBQTokenizer)
