"""Every node's execute on the tiny checkpoint, with ComfyUI's modules replaced by the stubs (pytest-mock)."""
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch


SIZE = dict(width=32, height=32)


@pytest.fixture
def env(comfy, tiny_dir):
    """Fake ComfyUI with the tiny checkpoint in models/ursa/, and the plugin's node modules imported under it."""
    target = shutil.copytree(tiny_dir, f"{comfy.models_dir}/ursa/URSA-tiny")
    import nodes  # noqa: F401 - imported after the stubs are in sys.modules
    from nodes import (nodes_extend, nodes_loader, nodes_sampler, nodes_schedule, nodes_text, nodes_tokenizer,
                       nodes_tokens_io)
    comfy.mods = dict(loader=nodes_loader, text=nodes_text, tok=nodes_tokenizer, sched=nodes_schedule,
                      sampler=nodes_sampler, extend=nodes_extend, tio=nodes_tokens_io)
    comfy.model_dir = target
    return comfy


def load(env):
    model, vq, _ = env.run(env.mods["loader"].URSAModelLoader, model_name="URSA-tiny", dtype="fp32").result
    cond = env.run(env.mods["text"].URSATextEncode, model=model, prompt="a red fox", negative_prompt="",
                   motion_score=9.0).result[0]
    return model, vq, cond


def sample(env, model, cond, hidden=None, **kw):
    args = dict(model=model, conditioning=cond, seed=1, steps=3, cfg=5.0, guidance_trunc=0.9, frames=1, c=0.0,
                alpha=0.0, shift=0.0, preview=False, **SIZE)
    args.update(kw)
    return env.run(env.mods["sampler"].URSASampler, hidden=hidden, **args).result[0]


def test_loader_lists_and_loads(env):
    loader = env.mods["loader"].URSAModelLoader
    schema = loader.GET_SCHEMA()
    assert schema.input_by_id("model_name").options == ["URSA-tiny"]
    assert env.validate(loader, {"model_name": "URSA-tiny", "dtype": "auto"}) == []
    errors = env.validate(loader, {"model_name": "nope", "dtype": "fp32"})
    assert errors and "'nope' not found" in str(errors) and "URSA-tiny" in str(errors)
    model, vq, _ = load(env)
    # Both models are wrapped for ComfyUI's model management, with the devices it chose.
    assert [p.model for p in env.patchers] == [model.model.transformer, vq.vq]
    assert model.model.transformer.dtype == torch.float32 and vq.fps == 12.0


def test_text_encode_motion_only_for_video(env):
    model, _, cond = load(env)
    assert cond.video_ids.shape == cond.image_ids.shape == (1, model.model.config.max_prompt_length)
    tok = model.model.prompts.tokenizer
    assert tok.decode(cond.video_ids[0], skip_special_tokens=True) == "motion=9.0, a red fox"
    assert tok.decode(cond.image_ids[0], skip_special_tokens=True) == "a red fox"
    assert torch.equal(cond.ids_for(1)[0], cond.image_ids) and torch.equal(cond.ids_for(5)[0], cond.video_ids)


def test_sampler_text_to_image_progress_and_model_management(env):
    model, _, cond = load(env)
    clip = sample(env, model, cond)
    assert clip.tokens.shape == (1, 1, 4, 4) and clip.fps == 12.0
    assert [u["value"] for u in env.progress_updates][-1] == 3 and len(env.progress_updates) == 3
    assert model.patcher in env.loaded_models, "the sampler must go through load_models_gpu"
    again = sample(env, model, cond)
    assert torch.equal(clip.tokens, again.tokens)


def test_sampler_preview_images(env):
    """The preview is drawn at the clip's pixel size and sent as drawn (max size None): the frontend labels it with
    its size, which core's scaling to --preview-size (512) made wrong on small runs."""
    model, _, cond = load(env)
    sample(env, model, cond, preview=True, width=48, height=32)
    previews = [u["preview"] for u in env.progress_updates if u.get("preview") is not None]
    assert previews and all(p[0] == "JPEG" and p[1].size == (48, 32) and p[2] is None for p in previews)


@pytest.mark.parametrize("h,w,pixel_scale", [(64, 64, 16), (5, 7, 8), (300, 100, 16)])
def test_preview_is_the_token_colours_at_pixel_size(env, h, w, pixel_scale):
    """Colours per token, then a nearest-neighbour blow-up of the bytes: the same pixels as the colours scaled first
    (capped at PREVIEW_MAX_SIDE)."""
    from ursa_core.sampling.preview import token_colors
    from nodes import glue
    codebook = torch.randn(1000, 6)
    tokens = torch.randint(0, 1000, (1, 1, h, w))
    progress = glue.StepProgress(1, codebook, pixel_scale=pixel_scale)
    picture = progress._preview(tokens)[1]
    scale = min(pixel_scale, glue.PREVIEW_MAX_SIDE // max(h, w))
    expected = (token_colors(codebook, tokens[0, 0], scale=scale).numpy() * 255).astype("uint8")
    assert picture.size == (w * scale, h * scale) and np.array_equal(np.asarray(picture), expected)


def test_sampler_says_compiling_on_the_first_step_of_each_size(env):
    """A compiled model's first step at a new size compiles for a while: the node says so until that step ends."""
    model, _, cond = load(env)
    model.options = replace(model.options, compile=True)  # as loaded with compile (torch.compile does not run here)
    # the line shows the clip, then the steps and cfg used (issue 23: widgets at 0 follow the model)
    line = "32×32 px, 1 frame · 3 steps, cfg 5"
    compiling = f"{line} · compiling the layers for this size (first run)…"
    sample(env, model, cond, hidden={"unique_id": "3"})
    assert env.node_texts == [("3", compiling), ("3", line)]
    env.node_texts.clear()
    sample(env, model, cond, hidden={"unique_id": "3"})  # this size is compiled now
    assert env.node_texts == [("3", line)]
    env.node_texts.clear()
    sample(env, model, cond, frames=5, hidden={"unique_id": "3"})  # a new size compiles again
    assert [t for _, t in env.node_texts] == [
        "32×32 px, 5 frames · 3 steps, cfg 5 · compiling the layers for this size (first run)…",
        "32×32 px, 5 frames · 3 steps, cfg 5"]


def test_sampler_cancel_stops_at_next_step(env):
    model, _, cond = load(env)
    env.interrupt_after(1)
    with pytest.raises(env.InterruptProcessingException):
        sample(env, model, cond, steps=5)
    assert len(env.progress_updates) == 1


def test_sampler_zero_is_the_models_default_and_the_preset_is_a_list(env):
    sampler = env.mods["sampler"].URSASampler
    base = {"model": ["1", 0], "conditioning": ["2", 0], "seed": 0, "steps": 4, "cfg": 7.0, "guidance_trunc": 0.9,
            "frames": 1, "width": 32, "height": 32, "c": 0.0, "alpha": 0.0, "shift": 0.0}
    # 0 is the model's default for steps and size (issue 23); below 0 is core's range check; presets are a list
    assert env.validate(sampler, {**base, "steps": 0, "width": 0, "height": 0}) == []
    assert "Value -1 smaller than min of 0" in str(env.validate(sampler, {**base, "steps": -1}))
    assert env.validate(sampler, {**base, "preset": "rl_tuned"}) == []
    assert "fast" in str(env.validate(sampler, {**base, "preset": "fast"}))


def encode(env, vq, image, **kw):
    return env.run(env.mods["tok"].URSATokenizerEncode, vq=vq, image=image, resize_mode=kw.pop("mode", "crop"),
                   **{**SIZE, **kw}).result[0]


def test_encode_any_size_and_alpha_then_decode(env):
    _, vq, _ = load(env)
    rgba = torch.rand(1, 50, 70, 4)
    clip = encode(env, vq, rgba)
    assert clip.tokens.shape == (1, 1, 4, 4)
    video = encode(env, vq, torch.rand(5, 32, 32, 3), mode="stretch")
    assert video.tokens.shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="frames=4"):
        encode(env, vq, torch.rand(4, 32, 32, 3))
    images, fps = env.run(env.mods["tok"].URSATokenizerDecode, vq=vq, tokens=video).result
    assert images.shape == (5, 32, 32, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0 <= float(images.min()) and float(images.max()) <= 1 and fps == 12.0
    foreign = type(video)(video.tokens.clone(), video.fps)
    foreign.tokens[0, 0, 0, 0] = 64000
    with pytest.raises(ValueError, match="another model"):
        env.run(env.mods["tok"].URSATokenizerDecode, vq=vq, tokens=foreign)


def schedule(env, mode, frames, **kw):
    args = dict(mode=mode, frames=frames, start_time=1.0, given_frames=1, keyframes="0:1.0, -1:1.0")
    args.update(kw)
    return env.run(env.mods["sched"].URSAFrameSchedule, **args)


def test_image_to_video_and_interpolation(env):
    model, vq, cond = load(env)
    first, last = encode(env, vq, torch.rand(1, 32, 32, 3)), encode(env, vq, torch.rand(1, 32, 32, 3))
    out = schedule(env, "image-to-video", 9, start_tokens=first)
    assert out.ui is not None  # the schedule preview image
    clip = sample(env, model, cond, frames=9, schedule=out.result[0])
    assert torch.equal(clip.tokens[:, 0], first.tokens[:, 0])
    interp = schedule(env, "interpolation", 9, start_tokens=first, end_tokens=last).result[0]
    clip = sample(env, model, cond, frames=9, schedule=interp)
    assert torch.equal(clip.tokens[:, 0], first.tokens[:, 0]) and torch.equal(clip.tokens[:, -1], last.tokens[:, 0])
    with pytest.raises(ValueError, match="end tokens"):
        schedule(env, "interpolation", 9, start_tokens=first)


def test_sampler_takes_frames_and_size_from_what_it_is_given(env):
    """Set once: with a Frame Schedule the clip has the schedule's frame count and its tokens' size (as core's video
    nodes read a latent's size); the node says so when its own widgets differ. Text-only runs use the widgets."""
    model, vq, cond = load(env)
    first = encode(env, vq, torch.rand(1, 32, 32, 3))  # 32x32 px = 4x4 tokens
    scheduled = schedule(env, "image-to-video", 9, start_tokens=first).result[0]
    clip = sample(env, model, cond, frames=5, width=64, height=48, schedule=scheduled, hidden={"unique_id": "7"})
    assert clip.tokens.shape == (1, 3, 4, 4) and torch.equal(clip.tokens[:, 0], first.tokens[:, 0])
    assert env.node_texts[-1] == ("7", "32×32 px, 9 frames from the Frame Schedule (wins over this node's 64×48, "
                                       "5 frames, which are for text-only runs) · 3 steps, cfg 5")
    same = sample(env, model, cond, frames=9, schedule=scheduled, hidden={"unique_id": "7"})  # widgets agree
    assert env.node_texts[-1] == ("7", "32×32 px, 9 frames · 3 steps, cfg 5")
    assert torch.equal(same.tokens, clip.tokens)
    given = sample(env, model, cond, frames=9, width=64, height=64, given_tokens=first, hidden={"unique_id": "7"})
    assert given.tokens.shape == (1, 3, 4, 4) and "from given_tokens" in env.node_texts[-1][1]
    text_only = sample(env, model, cond, frames=5, width=64, height=48, hidden={"unique_id": "7"})
    assert text_only.tokens.shape == (1, 2, 6, 8)
    assert env.node_texts[-1] == ("7", "64×48 px, 5 frames · 3 steps, cfg 5")


def test_schedule_validation_and_custom_keyframes(env):
    node = env.mods["sched"].URSAFrameSchedule
    base = {"mode": "text-to-video", "frames": 9, "start_time": 1.0, "given_frames": 1, "keyframes": ""}
    assert env.validate(node, base) == []
    assert "frames=8" in str(env.validate(node, {**base, "frames": 8}))
    with pytest.raises(ValueError, match="keyframe index 7"):
        schedule(env, "custom keyframes", 9, keyframes="7:1.0", start_tokens=None)
    model, vq, cond = load(env)
    clip = encode(env, vq, torch.rand(9, 32, 32, 3))
    keyed = schedule(env, "custom keyframes", 9, keyframes="1:1.0, 2:0.5", start_tokens=clip).result[0]
    assert keyed.schedule.start == (0.0, 1.0, 0.5)
    out = sample(env, model, cond, frames=9, schedule=keyed)
    assert torch.equal(out.tokens[:, 1], clip.tokens[:, 1])


def test_extend_video_carries_tokens(env):
    model, vq, cond = load(env)
    base = sample(env, model, cond, frames=9)
    env.progress_updates.clear()
    args = dict(model=model, conditioning=cond, tokens=base, windows=2, window_frames=9, overlap=1, seed=0,
                steps=2, cfg=3.0, guidance_trunc=0.9, carry_start=1.0, window_prompts="a fox\na fox at night")
    out = env.run(env.mods["extend"].URSAExtendVideo, **args).result[0]
    assert out.tokens.shape == (1, 3 + 2 * 2, 4, 4)
    assert torch.equal(out.tokens[:, :3], base.tokens)  # never re-encoded: the original tokens survive exactly
    assert len(env.progress_updates) == 4
    env.interrupt_after(2)  # cancel right after the first window
    with pytest.raises(env.InterruptProcessingException):
        env.run(env.mods["extend"].URSAExtendVideo, **args)
    assert "overlap=3" in str(pytest.raises(ValueError, env.run, env.mods["extend"].URSAExtendVideo,
                                            **{**args, "overlap": 3}).value)


def test_save_and_load_tokens(env):
    model, _, cond = load(env)
    clip = sample(env, model, cond)
    saved = env.run(env.mods["tio"].URSASaveTokens, hidden={"prompt": {}, "unique_id": "9"}, tokens=clip,
                    filename_prefix="ursa_tokens/test")
    entry = "ursa_tokens/test_00001_.safetensors [output]"
    # On the node (core's progress text, which the frontend draws), in the history, and for web/js/ursa.js the
    # exact entry URSA Load Tokens lists, so the frontend can add it to that list without a refresh.
    assert env.node_texts == [("9", f"saved {entry}")]
    assert saved.ui == {"text": [f"saved {entry}"], "ursa_token_file": [entry]}
    loader = env.mods["tio"].URSALoadTokens
    options = loader.GET_SCHEMA().input_by_id("token_file").options
    assert options == [entry]
    loaded = env.run(loader, token_file=options[0]).result[0]
    assert torch.equal(loaded.tokens, clip.tokens) and loaded.fps == clip.fps
    assert loaded.identity == clip.identity and loaded.identity["model"] == "URSA-tiny"


def test_load_tokens_stays_inside_input_and_output(env, tmp_path):
    """Names outside ComfyUI's input/output folders (.., absolute, symlink escapes) are refused exactly like a
    missing file, and the answer shows no path of this machine."""
    import os

    from ursa_core.files.token_io import save_tokens

    outside = tmp_path / "outside"
    secret = save_tokens(torch.zeros(1, 1, 4, 4, dtype=torch.long), outside / "secret.safetensors")
    os.symlink(secret, f"{env.input_dir}/link.safetensors")
    os.symlink(outside, f"{env.input_dir}/linkdir")
    save_tokens(torch.zeros(1, 1, 4, 4, dtype=torch.long), f"{env.input_dir}/mine.safetensors")
    loader = env.mods["tio"].URSALoadTokens
    assert loader.GET_SCHEMA().input_by_id("token_file").options == ["mine.safetensors"]
    assert env.validate(loader, {"token_file": "mine.safetensors"}) == []
    rel = os.path.relpath(secret, env.input_dir)
    answers = set()
    for name in (rel, rel + " [output]", str(secret), "link.safetensors", "linkdir/secret.safetensors",
                 "missing.safetensors", "../missing.safetensors"):
        errors = str(env.validate(loader, {"token_file": name}))
        assert errors != "[]" and str(tmp_path) not in errors.replace(name, "")
        answers.add(errors.replace(repr(name), "NAME"))
    assert len(answers) == 1  # the same answer whether or not the file exists


def test_tokens_from_another_tokenizer_are_refused(env):
    from ursa_core.files.token_io import TokenClip

    model, vq, cond = load(env)
    clip = sample(env, model, cond)
    foreign = TokenClip(clip.tokens, clip.fps, {**clip.identity, "kind": "ibq", "config_hash": "0123456789ab",
                                                "model": "URSA-1.7B-IBQ1024"})
    extend = dict(model=model, conditioning=cond, tokens=foreign, windows=1, window_frames=5, overlap=1, seed=0,
                  steps=2, cfg=3.0, guidance_trunc=0.9, carry_start=1.0, window_prompts="")
    for node, args in ((env.mods["tok"].URSATokenizerDecode, dict(vq=vq, tokens=foreign)),
                       (env.mods["extend"].URSAExtendVideo, extend)):
        with pytest.raises(ValueError) as exc:
            env.run(node, **args)
        assert "URSA-1.7B-IBQ1024" in str(exc.value) and "URSA-tiny" in str(exc.value)
    extended = env.run(env.mods["extend"].URSAExtendVideo, **{**extend, "tokens": clip}).result[0]
    assert extended.identity == clip.identity and extended.latent_frames == 2
    with pytest.raises(ValueError, match="given_tokens were made by URSA-1.7B-IBQ1024"):
        sample(env, model, cond, given_tokens=foreign)
    images, _ = env.run(env.mods["tok"].URSATokenizerDecode, vq=vq, tokens=clip).result
    assert images.shape == (1, 32, 32, 3)


def test_loader_speed_options(env):
    model, _, _ = env.run(env.mods["loader"].URSAModelLoader, model_name="URSA-tiny", dtype="fp32",
                          attention="math", compile=False).result
    assert model.model.transformer.attn_implementation == "math"  # pinned SDPA backend
    loader = env.mods["loader"].URSAModelLoader
    assert env.validate(loader, {"model_name": "URSA-tiny", "dtype": "fp32", "attention": "nope"})


def test_interpolation_needs_a_frame_to_generate(env):
    """A rule tying mode, frames, start_time and hold: checked when the node runs (a validator can hold one rule,
    and the Frame Schedule's is frames), with one message naming the values. Without hold nothing is held, so a
    5-frame interpolation has frames to make."""
    node = env.mods["sched"].URSAFrameSchedule
    base = {"mode": "interpolation", "frames": 5, "start_time": 1.0, "given_frames": 1, "keyframes": ""}
    assert env.validate(node, base) == []
    _, vq, _ = load(env)
    ends = encode(env, vq, torch.rand(1, 32, 32, 3))
    with pytest.raises(ValueError, match="frames=5 with mode='interpolation' and start_time=1 holds every"):
        env.run(node, **base, start_tokens=ends, end_tokens=ends)
    with pytest.raises(ValueError, match="frames=5 with mode='interpolation' and start_time=1 holds every"):
        env.run(node, **base, start_tokens=ends, end_tokens=ends, hold=True)
    unheld = env.run(node, **base, start_tokens=ends, end_tokens=ends, hold=False).result[0]
    assert unheld.schedule.start == (1.0, 1.0) and unheld.schedule.held() == []
    assert env.run(node, **{**base, "start_time": 0.9}, start_tokens=ends, end_tokens=ends).result
    assert env.run(node, **{**base, "frames": 9}, start_tokens=ends, end_tokens=ends).result


def test_nan_refusing_bounds_compare_like_core_and_serialize_as_numbers(env):
    """Core checks a number widget with `value < min` and `value > max`; NaN must fail both, numbers behave as
    before, and the frontend still receives plain numbers."""
    import json
    import math

    from nodes.widgets import NanRefusingBound

    low, high = NanRefusingBound(0.0), NanRefusingBound(1.0)
    assert math.nan < low and math.nan > high  # what core computes for a NaN value: both out of range
    assert not (0.5 < low) and not (0.5 > high) and (-0.1 < low) and (1.5 > high) and not (0.0 < low)
    assert json.dumps({"min": low, "max": high}) == '{"min": 0.0, "max": 1.0}' and low == 0.0
    cfg = env.mods["sampler"].URSASampler.GET_SCHEMA().input_by_id("cfg")
    assert isinstance(cfg.min, NanRefusingBound) and isinstance(cfg.max, NanRefusingBound)
