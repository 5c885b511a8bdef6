"""Fine-tuned transformer weights over a base checkpoint, tensor files read as tensors only, `ursa convert`."""
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ursa_core
from ursa_core import cli
from ursa_core.checkpoint.tiny import make_tiny
from ursa_core.errors import InputError
from ursa_core.files.safetensors_io import load_state_dict
from ursa_core.files.tensor_files import convert_to_safetensors, read_tensors


class WritesAFile:
    """A pickle payload that writes `marker` when unpickled: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def malicious(path, marker):
    """A .bin that looks like a state dict and runs code when loaded unsafely."""
    torch.save({"model.norm.weight": torch.ones(4), "extra": WritesAFile(marker)}, str(path))
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_dir):
    """A 'fine-tune' of the tiny checkpoint: every tensor of its transformer changed, saved as upstream saves it."""
    root = tmp_path_factory.mktemp("tuned")
    state = load_state_dict(tiny_dir / "transformer")
    gen = torch.Generator().manual_seed(9)
    changed = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    torch.save(changed, str(root / "diffusion_pytorch_model.bin"))
    return root / "diffusion_pytorch_model.bin", changed


def test_fine_tuned_weights_replace_the_base_transformer_and_nothing_else(tiny_dir, tiny_model, tuned):
    path, changed = tuned
    model = ursa_core.load(tiny_dir, dtype="fp32", transformer_weights=path)
    loaded = model.transformer.state_dict()
    assert all(torch.equal(loaded[k], changed[k]) for k in changed)
    assert not torch.equal(loaded["lm_head.weight"], tiny_model.transformer.state_dict()["lm_head.weight"])
    assert torch.equal(model.path.unit, tiny_model.path.unit)   # the folder still gives path and tokenizers


def test_partial_and_wrapped_state_dicts_keep_the_base_elsewhere(tiny_dir, tiny_model, tmp_path):
    key = "model.layers.1.mlp.down_proj.weight"
    new = torch.full_like(tiny_model.transformer.state_dict()[key], 0.5)
    save_file({f"module.{key}": new}, str(tmp_path / "part.safetensors"))   # a DDP-wrapped partial fine-tune
    model = ursa_core.load(tiny_dir, dtype="fp32", transformer_weights=tmp_path / "part.safetensors")
    state, base = model.transformer.state_dict(), tiny_model.transformer.state_dict()
    assert torch.equal(state[key], new)
    assert all(torch.equal(state[k], base[k]) for k in base if k != key)


def record_tensor_reads(monkeypatch) -> list[tuple[str, str]]:
    """(file name, tensor name) of every tensor read from a safetensors file from now on."""
    import safetensors

    reads, open_file = [], safetensors.safe_open

    class Recording:
        def __init__(self, path, *args, **kwargs):
            self.path, self.handle = Path(path).name, open_file(path, *args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, name):
            reads.append((self.path, name))
            return self.handle.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    return reads


def test_base_tensors_a_fine_tune_replaces_are_never_read(tiny_dir, tuned, tmp_path, monkeypatch):
    path, changed = tuned   # replaces every tensor of the base
    key = "model.layers.1.mlp.down_proj.weight"
    save_file({key: changed[key]}, str(tmp_path / "part.safetensors"))
    reads = record_tensor_reads(monkeypatch)

    def base_reads():
        return sorted(name for file, name in reads if file == "diffusion_pytorch_model.safetensors")

    ursa_core.load(tiny_dir, dtype="fp32", load_vae=False, transformer_weights=path)
    assert base_reads() == []
    ursa_core.load(tiny_dir, dtype="fp32", load_vae=False, transformer_weights=tmp_path / "part.safetensors")
    assert ("part.safetensors", key) in reads and base_reads() == sorted(k for k in changed if k != key)


def test_weights_of_another_size_or_tokenizer_are_one_line_naming_key_and_shapes(tiny_dir, tiny_ibq_dir, tmp_path):
    bigger = make_tiny(tmp_path / "URSA-1.7B-FSQ320", shape="1.7B")
    other_size = load_state_dict(bigger / "transformer")
    other_size.pop("lm_head.weight")
    save_file(other_size, str(tmp_path / "other_size.safetensors"))
    with pytest.raises(InputError, match=r"key 'model\.embed_tokens\.weight' has shape \(\d+, 256\) but this "
                                         r"checkpoint's is \(\d+, 64\): the weights are for another model size"):
        ursa_core.load(tiny_dir, dtype="fp32", transformer_weights=tmp_path / "other_size.safetensors")
    ibq = load_state_dict(tiny_ibq_dir / "transformer")
    save_file(ibq, str(tmp_path / "ibq.safetensors"))
    with pytest.raises(InputError, match=r"made for a visual tokenizer of 512 codes, but this checkpoint's has 64000"):
        ursa_core.load(tiny_dir, dtype="fp32", transformer_weights=tmp_path / "ibq.safetensors")
    save_file({"model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 64)},
              str(tmp_path / "lora.safetensors"))
    with pytest.raises(InputError, match=r"key 'model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight' is not a weight"):
        ursa_core.load(tiny_dir, dtype="fp32", transformer_weights=tmp_path / "lora.safetensors")


def test_a_pickle_with_code_is_refused_and_left_untouched(tmp_path):
    marker = tmp_path / "payload_ran"
    path = malicious(tmp_path / "evil.bin", marker)
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"evil\.bin: refused: not a tensors-only file") as refused:
        read_tensors(path, "--transformer-weights")
    assert not marker.exists() and path.read_bytes() == before
    # the line names what the file would run, and never passes on torch's advice to load it unsafely
    message = str(refused.value)
    assert "unsupported global: global exec" in message.lower() and "weights_only` set to `False`" not in message
    # the payload is real: an unsafe load of the same kind of file runs it
    proof = tmp_path / "unsafe_ran"
    torch.load(str(malicious(tmp_path / "proof.bin", proof)), weights_only=False)
    assert proof.read_text() == "ran"


def test_a_plain_pickle_with_code_is_refused_too(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": WritesAFile(marker)}))
    with pytest.raises(InputError, match="refused: not a tensors-only file"):
        read_tensors(path)
    assert not marker.exists()


@pytest.mark.parametrize("name, content, message", [
    ("weights.ckpt", b"x", r"\.ckpt is not a tensor file: use \.safetensors, or a tensors-only pickle"),
    ("weights.safetensors", b"not safetensors", "not a readable safetensors file"),
    ("weights.bin", b"garbage", "refused: not a tensors-only file"),
])
def test_other_files_are_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_tensors(tmp_path / name)


def test_cli_checks_the_weights_before_loading_and_uses_them(tiny_dir, tuned, tmp_path, capsys, mocker):
    path, _ = tuned
    args = ["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--steps", "2", "--height", "32",
            "--width", "32"]
    evil = malicious(tmp_path / "evil.bin", tmp_path / "ran")
    load = mocker.spy(ursa_core.checkpoint.loader, "load_state_dict")
    assert cli.main([*args, "--transformer-weights", str(evil), "--out", str(tmp_path / "a.png")]) == 2
    assert "refused: not a tensors-only file" in capsys.readouterr().err
    assert load.call_count == 0 and not (tmp_path / "ran").exists()   # refused before any weight was read
    assert cli.main([*args, "--transformer-weights", str(path), "--out", str(tmp_path / "b.png")]) == 0
    assert f"with transformer weights {path}" in capsys.readouterr().out


def test_convert_writes_safetensors_atomically_and_refuses_code(tuned, tmp_path, capsys):
    path, changed = tuned
    source = shutil.copy(path, tmp_path / "model.bin")
    assert cli.main(["convert", str(source)]) == 0
    out = tmp_path / "model.safetensors"
    assert f"wrote {out}" in capsys.readouterr().out
    converted = load_file(str(out))
    assert converted.keys() == changed.keys() and all(torch.equal(converted[k], changed[k]) for k in changed)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    evil = malicious(tmp_path / "evil.bin", tmp_path / "ran")
    assert cli.main(["convert", str(evil), "--out", str(tmp_path / "evil.safetensors")]) == 2
    assert not (tmp_path / "evil.safetensors").exists() and not (tmp_path / "ran").exists()
    with pytest.raises(InputError, match="name it \\*.safetensors"):
        convert_to_safetensors(source, tmp_path / "x.bin")


def test_loader_node_takes_weights_from_the_diffusion_models_folder(comfy, tiny_dir, tuned, tmp_path):
    path, changed = tuned
    shutil.copytree(tiny_dir, f"{comfy.models_dir}/ursa/URSA-tiny")
    Path(f"{comfy.models_dir}/diffusion_models").mkdir(parents=True)
    shutil.copy(path, f"{comfy.models_dir}/diffusion_models/tuned.bin")
    malicious(tmp_path / "evil.bin", tmp_path / "ran")
    shutil.copy(tmp_path / "evil.bin", f"{comfy.models_dir}/diffusion_models/evil.bin")
    from nodes import nodes_loader
    loader = nodes_loader.URSAModelLoader
    assert loader.GET_SCHEMA().input_by_id("transformer_weights").options == ["none", "evil.bin", "tuned.bin"]
    good = {"model_name": "URSA-tiny", "dtype": "fp32", "transformer_weights": "tuned.bin"}
    assert comfy.validate(loader, good) == []
    missing = comfy.validate(loader, {"model_name": "URSA-tiny", "dtype": "fp32", "transformer_weights": "x.bin"})
    assert "transformer_weights: 'x.bin' not in ['none', 'evil.bin', 'tuned.bin']" in str(missing)   # core's list check
    model, _, info = comfy.run(loader, model_name="URSA-tiny", dtype="fp32", transformer_weights="tuned.bin").result
    assert info.endswith("; transformer weights tuned.bin")
    loaded = model.model.transformer.state_dict()
    assert torch.equal(loaded["lm_head.weight"], changed["lm_head.weight"])
    with pytest.raises(InputError, match="refused: not a tensors-only file"):
        comfy.run(loader, model_name="URSA-tiny", dtype="fp32", transformer_weights="evil.bin")
    assert not (tmp_path / "ran").exists()
