"""Token files carry the identity of the tokenizer that made them; names resolve only inside allowed folders;
`ursa decode` turns a token file back into pixels with the right model (or refuses, naming both)."""
import json
import logging
import os

import numpy as np
import pytest
import torch

from ursa_core import cli
from ursa_core.errors import InputError
from ursa_core.files.contained import list_contained, resolve_contained
from ursa_core.files.token_io import (FORMAT, check_identity, load_tokens, model_identity, save_tokens,
                                tokenizer_identity)


def test_identity_is_saved_and_loaded(tmp_path, tiny_model):
    identity = model_identity(tiny_model)
    assert identity["kind"] == "fsq" and identity["codebook_size"] == tiny_model.codebook_size
    assert (identity["temporal_stride"], identity["spatial_stride"]) == (4, 8)
    assert len(identity["config_hash"]) == 12 and identity["model"] == tiny_model.folder.name
    tokens = torch.randint(0, 100, (1, 2, 3, 4))
    path = save_tokens(tokens, tmp_path / "t", identity=identity, fps=12.0)
    assert path.name == "t.safetensors" and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
    loaded, meta = load_tokens(path)
    assert torch.equal(loaded, tokens) and meta["tokenizer"] == identity and meta["latent_grid"] == [2, 3, 4]
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["format"] == FORMAT


def test_identity_tells_fsq_from_ibq_and_names_both(tiny_model, tiny_ibq_dir):
    from ursa_core.visual_tokenizer.loading import load_visual_tokenizer

    ibq = tokenizer_identity(load_visual_tokenizer(tiny_ibq_dir / "vae"), tiny_ibq_dir.name)
    fsq = model_identity(tiny_model)
    with pytest.raises(InputError) as exc:
        check_identity(ibq, fsq, "the tokens")
    message = str(exc.value)
    assert tiny_ibq_dir.name in message and tiny_model.folder.name in message and "kind" in message
    check_identity(fsq, dict(fsq, model="renamed folder"))  # the name alone is not the identity
    check_identity(None, fsq)  # tokens without identity cannot be checked (load_tokens warns for old files)
    other_config = dict(fsq, config_hash="0" * 12)
    with pytest.raises(InputError, match="config_hash differ"):
        check_identity(other_config, fsq)


def test_old_token_files_load_with_a_warning(tmp_path, caplog):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"tokens": torch.ones(1, 1, 2, 2, dtype=torch.int32)}, str(path),
              metadata={"format": "ursa-tokens-v1", "fps": "12.0"})
    with caplog.at_level(logging.WARNING):
        tokens, meta = load_tokens(path)
    assert tokens.dtype == torch.long and meta == {"fps": 12.0} and "tokenizer" not in meta
    assert "ursa-tokens-v1" in caplog.text and "identity" in caplog.text


def test_interrupted_token_save_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_tokens(torch.zeros(1, 1, 2, 2, dtype=torch.long), tmp_path / "t.safetensors")
    before = path.read_bytes()

    def interrupted(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_tokens(torch.ones(1, 1, 2, 2, dtype=torch.long), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


# --- contained names ------------------------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path):
    made = {"input": tmp_path / "in", "output": tmp_path / "out"}
    for folder in (*made.values(), tmp_path / "secret"):
        folder.mkdir()
    (tmp_path / "secret" / "s.safetensors").write_bytes(b"x")
    (made["input"] / "sub").mkdir()
    (made["input"] / "sub" / "a.safetensors").write_bytes(b"x")
    (made["output"] / "b.safetensors").write_bytes(b"x")
    (made["output"] / "notes.txt").write_bytes(b"x")
    os.symlink(tmp_path / "secret" / "s.safetensors", made["input"] / "escape.safetensors")
    os.symlink(made["input"] / "sub" / "a.safetensors", made["output"] / "inside.safetensors")
    return made


def test_resolve_contained(roots, tmp_path):
    real = os.path.realpath
    assert resolve_contained("sub/a.safetensors", roots, ".safetensors") == \
        type(tmp_path)(real(roots["input"] / "sub" / "a.safetensors"))
    assert resolve_contained("b.safetensors [output]", roots, ".safetensors").name == "b.safetensors"
    for refused in ("../secret/s.safetensors", str(tmp_path / "secret" / "s.safetensors"), "escape.safetensors",
                    "b.safetensors", "notes.txt [output]", "sub", "sub/a.safetensors [temp]", "",
                    "sub/../../secret/s.safetensors", "x\0.safetensors"):
        assert resolve_contained(refused, roots, ".safetensors") is None, refused


def test_list_contained_skips_escaping_links(roots):
    # A link is judged by where it really points, against its own root (even one into the other root).
    assert list_contained(roots, ".safetensors") == ["sub/a.safetensors", "b.safetensors [output]"]


# --- ursa decode ----------------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("ursa_cache")  # one $URSA_CACHE per module (conftest)


def test_decode_gives_back_what_generate_wrote(tmp_path, tiny_dir, capsys):
    from PIL import Image

    tokens = tmp_path / "t.safetensors"
    assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--steps", "2", "--seed", "3",
                     "--out", str(tmp_path / "gen.png"), "--save-tokens", str(tokens)]) == 0
    assert cli.main(["decode", "--tokens", str(tokens), "--out", str(tmp_path / "dec.png")]) == 0
    assert f"wrote 1 frame(s) to {tmp_path / 'dec.png'}" in capsys.readouterr().out
    pixels = [np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("gen", "dec")]
    assert pixels[0].shape == (64, 64, 3) and np.array_equal(pixels[0], pixels[1])


def test_decode_with_another_tokenizer_is_one_line_naming_both(tmp_path, tiny_dir, tiny_ibq_dir, capsys):
    tokens = tmp_path / "t.safetensors"
    assert cli.main(["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--steps", "2",
                     "--out", str(tmp_path / "gen.png"), "--save-tokens", str(tokens)]) == 0
    capsys.readouterr()
    out = tmp_path / "dec.png"
    assert cli.main(["decode", "--tokens", str(tokens), "--model", str(tiny_ibq_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and tiny_dir.name in err and tiny_ibq_dir.name in err and not out.exists()


@pytest.mark.parametrize("case", ["missing", "not-tokens", "no-model"])
def test_decode_bad_token_file_exit_2(tmp_path, capsys, case):
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    if case == "not-tokens":
        save_file({"weight": torch.zeros(2)}, str(path))
    elif case == "no-model":
        save_tokens(torch.zeros(1, 1, 2, 2, dtype=torch.long), path)
    assert cli.main(["decode", "--tokens", str(path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    assert {"missing": "not found", "not-tokens": "not an URSA token file", "no-model": "--model"}[case] in err


def test_foreign_metadata_is_one_line(tmp_path):
    from safetensors.torch import save_file

    from ursa_core.errors import InputError
    from ursa_core.files.token_io import FORMAT, load_tokens
    path = tmp_path / "odd.safetensors"
    save_file({"tokens": torch.zeros(1, 1, 2, 2, dtype=torch.int32)}, str(path), metadata={"format": FORMAT,
                                                                                          "fps": "twelve"})
    with pytest.raises(InputError, match="metadata is not the JSON"):
        load_tokens(path)
    save_file({"tokens": torch.zeros(2, 2, dtype=torch.int32)}, str(path), metadata={"format": FORMAT})
    with pytest.raises(InputError, match=r"not \[B, T, h, w\]"):
        load_tokens(path)
