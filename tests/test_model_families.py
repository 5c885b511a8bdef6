"""Every released checkpoint family loads, samples and decodes through `ursa_core.load`, the CLI and the loader node,
with its own defaults: tiny random checkpoints with each family's structure (docs/MODELS.md), built at test time."""
import shutil
from pathlib import Path

import pytest
import torch

import ursa_core
from ursa_core.checkpoint.defaults import CHECKPOINT_REPOS, MODEL_DEFAULTS, WEIGHTS_REPOS, identify, resolve
from ursa_core.checkpoint.tiny import make_tiny
from ursa_core import cli
from ursa_core.errors import CheckpointError
from ursa_core.files.safetensors_io import load_state_dict, save_state_dict

# name -> (visual tokenizer, transformer shape)
FAMILIES = {
    "URSA-0.6B-FSQ320": ("fsq", "0.6B"),
    "URSA-0.6B-IBQ1024": ("ibq", "0.6B"),
    "URSA-1.7B-FSQ320": ("fsq", "1.7B"),
    "URSA-1.7B-IBQ1024": ("ibq", "1.7B"),
    "URSA-1.7B-IBQ512": ("ibq", "1.7B"),
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: make_tiny(root / name, seed=i, vae=vae, shape=shape)
            for i, (name, (vae, shape)) in enumerate(FAMILIES.items())}


def small(model):
    stride = model.geometry.spatial_stride
    return dict(height=2 * stride, width=2 * stride)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_loads_samples_and_decodes_through_the_library(family_dirs, name):
    model = ursa_core.load(family_dirs[name], dtype="fp32")
    cfg = model.config
    assert model.identity.name == name and model.identity.source == "folder name"
    assert model.identity.defaults == MODEL_DEFAULTS[name.split("-")[-1]]
    heads_width = cfg.num_attention_heads * cfg.head_dim
    # the structure of the released size: 0.6B has heads x head_dim = 2 x hidden (16 x 128 vs 1024), 1.7B = hidden
    assert heads_width == (2 * cfg.hidden_size if "0.6B" in name else cfg.hidden_size)
    assert model.transformer.model.layers[0].self_attn.o_proj.weight.shape == (cfg.hidden_size, heads_width)
    assert cfg.intermediate_size == 3 * cfg.hidden_size
    run = ursa_core.generate(model, "a red fox", frames=1, steps=2, seed=1, **small(model))
    assert run.settings["guidance"] == 7.0   # the model's default, left unset
    frames = ursa_core.decode_tokens(model, run.tokens)
    assert frames.shape == (1, *small(model).values(), 3) and torch.isfinite(frames).all()


def test_unset_settings_follow_the_model_and_given_ones_are_kept(family_dirs):
    model = ursa_core.load(family_dirs["URSA-1.7B-IBQ512"], dtype="fp32")
    run = ursa_core.generate(model, "a red fox", seed=0, steps=2)
    assert (run.settings["height"], run.settings["width"], run.settings["frames"]) == (512, 512, 1)
    assert run.tokens.shape == (1, 1, 32, 32)
    used = resolve(model.identity.defaults, "rl_tuned", height=256)
    assert (used.height, used.width, used.steps, used.guidance) == (256, 512, 25, 1.0)
    assert used.filled == ("frames", "width", "steps", "guidance")
    video = resolve(MODEL_DEFAULTS["FSQ320"], steps=7)
    assert (video.frames, video.height, video.width, video.steps, video.guidance) == (49, 320, 512, 7, 7.0)


def test_identity_from_configs_and_from_a_hub_cache_path(family_dirs, tmp_path):
    renamed = shutil.copytree(family_dirs["URSA-0.6B-IBQ1024"], tmp_path / "my-model")
    (renamed / "model_index.json").write_text('{"_class_name": "URSAPipeline", "transformer": [], '
                                              '"scheduler": [], "tokenizer": []}')
    model = ursa_core.load(renamed, dtype="fp32", load_vae=False)
    # no name, no tiny label: the tokenizer says IBQ (1024 unless the name says 512); this width is no released size
    assert (model.identity.variant, model.identity.size, model.identity.source) == ("IBQ1024", None, "configs")
    assert model.identity.describe() == "URSA-?-IBQ1024 (read from its configs): 1024×1024, 1 frame, 25 steps, cfg 7"
    geometry = model.geometry
    snapshot = tmp_path / "models--BAAI--URSA-1.7B-IBQ512" / "snapshots" / "0123abc"
    assert identify(snapshot, 2048, geometry).name == "URSA-1.7B-IBQ512"
    assert identify(tmp_path / "anything", 1024, geometry).name == "URSA-0.6B-IBQ1024"
    assert identify(tmp_path / "ursa-1.7b-ibq5120", 2048, geometry).variant == "IBQ1024"  # no partial names


@pytest.mark.parametrize("name", ["URSA-0.6B-FSQ320", "URSA-1.7B-IBQ512"])
def test_each_family_through_the_cli_shows_the_model_and_its_defaults(family_dirs, name, tmp_path, capsys):
    out = tmp_path / "x.png"
    code = cli.main(["generate", "--model", str(family_dirs[name]), "--prompt", "a fox", "--steps", "2",
                     "--height", "32", "--width", "32", "--out", str(out)])
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert f"model {name} (from the folder name)" in printed
    assert "1 frame(s) 32x32, 2 steps, cfg 7 (guidance from the model's defaults)" in printed


def test_the_cli_preset_fills_cfg_and_steps_unless_given(family_dirs, tmp_path, capsys):
    folder = str(family_dirs["URSA-1.7B-IBQ512"])
    common = ["generate", "--model", folder, "--prompt", "a fox", "--height", "32", "--width", "32"]
    assert cli.main([*common, "--preset", "rl_tuned", "--steps", "2", "--out", str(tmp_path / "a.png")]) == 0
    assert "2 steps, cfg 1 (guidance from the model's defaults and preset rl_tuned)" in capsys.readouterr().out
    assert cli.main([*common, "--preset", "rl_tuned", "--cfg", "3", "--steps", "2",
                     "--out", str(tmp_path / "b.png")]) == 0
    assert "2 steps, cfg 3, " in capsys.readouterr().out
    assert cli.main([*common, "--preset", "fast", "--out", str(tmp_path / "c.png")]) == 2
    assert "preset='fast' is not allowed" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["URSA-0.6B-IBQ1024", "URSA-1.7B-FSQ320"])
def test_each_family_through_the_loader_node_with_the_models_size(comfy, family_dirs, name):
    shutil.copytree(family_dirs[name], f"{comfy.models_dir}/ursa/{name}")
    from nodes import nodes_loader, nodes_sampler, nodes_text, nodes_tokenizer
    assert name in nodes_loader.URSAModelLoader.GET_SCHEMA().input_by_id("model_name").options
    model, vq, info = comfy.run(nodes_loader.URSAModelLoader, model_name=name, dtype="fp32").result
    expected = {"URSA-0.6B-IBQ1024": "1024×1024, 1 frame, 25 steps, cfg 7",
                "URSA-1.7B-FSQ320": "512×320, 49 frames, 50 steps, cfg 7"}
    assert info == f"{name}: {expected[name]}"
    cond = comfy.run(nodes_text.URSATextEncode, model=model, prompt="a fox", negative_prompt="",
                     motion_score=9.0).result[0]
    # width / height 0: the model's size (FSQ320 512x320, IBQ1024 1024^2); steps 0 would be the model's too
    clip = comfy.run(nodes_sampler.URSASampler, model=model, conditioning=cond, seed=1, steps=1, cfg=1.0,
                     guidance_trunc=0.9, frames=1, width=0, height=0, c=0.0, alpha=0.0, shift=0.0,
                     preview=False).result[0]
    defaults = model.model.identity.defaults
    stride = model.model.geometry.spatial_stride
    assert clip.tokens.shape == (1, 1, defaults.height // stride, defaults.width // stride)
    images = comfy.run(nodes_tokenizer.URSATokenizerDecode, vq=vq, tokens=clip).result[0]
    assert images.shape == (1, defaults.height, defaults.width, 3)


@pytest.mark.parametrize("name", ["URSA-0.6B-FSQ320", "URSA-1.7B-IBQ512"])
def test_a_weight_key_the_loader_does_not_know_is_an_error_naming_it(family_dirs, name, tmp_path):
    folder = shutil.copytree(family_dirs[name], tmp_path / name)
    state = load_state_dict(folder / "transformer")
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(4)
    save_state_dict(state, folder / "transformer")
    with pytest.raises(CheckpointError, match=r"unexpected key 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
        ursa_core.load(folder, dtype="fp32")


def fake_download(monkeypatch):
    import huggingface_hub

    def fake(repo_id, local_dir, **kw):
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        return local_dir
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)


@pytest.mark.parametrize("repo", [*CHECKPOINT_REPOS, *WEIGHTS_REPOS])
def test_download_knows_every_released_repository(repo, tmp_path, capsys, monkeypatch):
    fake_download(monkeypatch)
    assert cli.main(["download", repo, "--dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and (tmp_path / repo.split("/")[-1]).is_dir()
    if repo in WEIGHTS_REPOS:
        assert "--transformer-weights" in captured.out and "--preset rl_tuned" in captured.out
    else:
        assert "checkpoint folder: pass it as --model" in captured.out
    assert CHECKPOINT_REPOS.keys() >= {"BAAI/URSA-0.6B-FSQ320", "BAAI/URSA-0.6B-IBQ1024", "BAAI/URSA-1.7B-IBQ512"}


def test_download_of_an_unknown_repository_warns(tmp_path, capsys, monkeypatch):
    fake_download(monkeypatch)
    assert cli.main(["download", "someone/other-model", "--dir", str(tmp_path)]) == 0
    assert "warning: someone/other-model is not one of the URSA repositories" in capsys.readouterr().err


def test_the_loaders_missing_model_message_names_every_released_checkpoint(comfy):
    from nodes import nodes_loader
    errors = str(comfy.validate(nodes_loader.URSAModelLoader, {"model_name": "URSA-x", "dtype": "auto"}))
    assert all(repo in errors for repo in CHECKPOINT_REPOS)


def test_batch_frames_follow_the_model_unless_the_outputs_are_images(family_dirs, tmp_path):
    from ursa_core.files.media import count_video_frames
    folder = family_dirs["URSA-0.6B-FSQ320"]
    fast = ["--height", "32", "--width", "32", "--steps", "2"]
    (tmp_path / "set.txt").write_text("a fox\n")
    assert cli.main(["batch", "--model", str(folder), "--prompts", str(tmp_path / "set.txt"),
                     "--outdir", str(tmp_path / "videos"), *fast]) == 0
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and count_video_frames(videos[0]) == 49   # FSQ320's clip
    (tmp_path / "ge").mkdir()
    (tmp_path / "ge" / "prompts.json").write_text('[{"id": 0, "prompt": "a bench"}]')
    (tmp_path / "ge" / "metadata.jsonl").write_text('{"tag": "single_object"}\n')
    assert cli.main(["batch", "--model", str(folder), "--prompts", str(tmp_path / "ge" / "prompts.json"),
                     "--outdir", str(tmp_path / "ge_out"), *fast]) == 0   # GenEval: images, whatever the model
    assert (tmp_path / "ge_out" / "00000" / "samples" / "00000.png").is_file()


def test_sampler_preset_rl_tuned_runs_one_branch_for_25_steps(comfy, family_dirs, mocker):
    name = "URSA-1.7B-IBQ512"
    shutil.copytree(family_dirs[name], f"{comfy.models_dir}/ursa/{name}")
    from nodes import nodes_loader, nodes_sampler, nodes_text
    model = comfy.run(nodes_loader.URSAModelLoader, model_name=name, dtype="fp32").result[0]
    cond = comfy.run(nodes_text.URSATextEncode, model=model, prompt="a fox", negative_prompt="bad",
                     motion_score=9.0).result[0]
    memory = mocker.spy(nodes_sampler, "sampling_memory")
    passes = mocker.spy(model.model.transformer, "hidden_states")
    clip = comfy.run(nodes_sampler.URSASampler, model=model, conditioning=cond, seed=1, steps=0, cfg=7.0,
                     guidance_trunc=0.9, frames=1, width=32, height=32, c=0.0, alpha=0.0, shift=0.0,
                     preview=False, preset="rl_tuned").result[0]
    assert clip.tokens.shape == (1, 1, 2, 2)
    assert len(comfy.progress_updates) == 25                          # the preset's steps (the widget was 0)
    assert {call.args[0].shape[0] for call in passes.call_args_list} == {1}   # cfg 1: never the negative branch
    assert memory.call_args.args[3] == 1.0                            # the memory check asked for one branch


def test_sampler_steps_at_0_follow_the_frames_of_the_clip_it_makes(comfy, family_dirs):
    """steps=0 is the model's default for the clip the sampler makes: a 9-frame Frame Schedule makes a video (FSQ320:
    50 steps) even with the sampler's frames widget at 1 (an image: 25 steps); the node says what it used."""
    name = "URSA-0.6B-FSQ320"
    shutil.copytree(family_dirs[name], f"{comfy.models_dir}/ursa/{name}")
    from nodes import nodes_loader, nodes_sampler, nodes_schedule, nodes_text, nodes_tokenizer
    model, vq, _ = comfy.run(nodes_loader.URSAModelLoader, model_name=name, dtype="fp32").result
    cond = comfy.run(nodes_text.URSATextEncode, model=model, prompt="a fox", negative_prompt="",
                     motion_score=9.0).result[0]
    size = small(model.model)
    first = comfy.run(nodes_tokenizer.URSATokenizerEncode, vq=vq, image=torch.rand(1, size["height"], size["width"], 3),
                      resize_mode="crop", **size).result[0]
    scheduled = comfy.run(nodes_schedule.URSAFrameSchedule, mode="image-to-video", frames=9, start_time=1.0,
                          given_frames=1, keyframes="", start_tokens=first).result[0]
    widgets = dict(model=model, conditioning=cond, seed=1, steps=0, cfg=7.0, guidance_trunc=0.9, frames=1, c=0.0,
                   alpha=0.0, shift=0.0, preview=False, **size)
    clip = comfy.run(nodes_sampler.URSASampler, hidden={"unique_id": "5"}, schedule=scheduled, **widgets).result[0]
    assert clip.tokens.shape[1] == 3 and len(comfy.progress_updates) == MODEL_DEFAULTS["FSQ320"].video_steps == 50
    shown = comfy.node_texts[-1][1]
    assert "9 frames from the Frame Schedule" in shown and shown.endswith(" · 50 steps, cfg 7")
    comfy.progress_updates.clear()
    comfy.run(nodes_sampler.URSASampler, hidden={"unique_id": "5"}, **widgets)   # text-only: the widget's one frame
    assert len(comfy.progress_updates) == MODEL_DEFAULTS["FSQ320"].image_steps == 25
    assert comfy.node_texts[-1][1].endswith("1 frame · 25 steps, cfg 7")
