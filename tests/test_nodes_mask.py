"""The paint-with-a-mask nodes on the tiny checkpoint under the ComfyUI stand-ins: Mask Schedule -> Sampler holds
what is not masked, Pad for Outpaint, Repaint Composite, and their one-line refusals."""
import shutil

import pytest
import torch

SIZE = dict(width=32, height=32)


@pytest.fixture
def env(comfy, tiny_dir):
    shutil.copytree(tiny_dir, f"{comfy.models_dir}/ursa/URSA-tiny")
    import nodes  # noqa: F401 - imported after the stubs are in sys.modules
    from nodes import nodes_loader, nodes_mask, nodes_sampler, nodes_schedule, nodes_text, nodes_tokenizer
    comfy.mods = dict(loader=nodes_loader, text=nodes_text, tok=nodes_tokenizer, sched=nodes_schedule,
                      sampler=nodes_sampler, mask=nodes_mask)
    model, vq, _ = comfy.run(nodes_loader.URSAModelLoader, model_name="URSA-tiny", dtype="fp32").result
    cond = comfy.run(nodes_text.URSATextEncode, model=model, prompt="a red fox", negative_prompt="",
                     motion_score=9.0).result[0]
    comfy.handles = (model, vq, cond)
    return comfy


def encode(env, image, **kw):
    return env.run(env.mods["tok"].URSATokenizerEncode, vq=env.handles[1], image=image, resize_mode="crop",
                   **{**SIZE, **kw}).result[0]


def mask_schedule(env, source, mask, **kw):
    args = dict(source_tokens=source, mask=mask, strength=1.0, grow=0)
    return env.run(env.mods["mask"].URSAMaskSchedule, **{**args, **kw})


def sample(env, frames=1, **kw):
    model, _, cond = env.handles
    args = dict(model=model, conditioning=cond, seed=1, steps=3, cfg=5.0, guidance_trunc=0.9, frames=frames, c=0.0,
                alpha=0.0, shift=0.0, preview=False, **SIZE)
    return env.run(env.mods["sampler"].URSASampler, **{**args, **kw}).result[0]


def test_inpainting_holds_the_unmasked_tokens_of_an_image_drawn_at_its_own_size(env):
    image = torch.rand(1, 64, 96, 3)                 # encoded with crop: the middle 64 x 64, scaled to 32 x 32
    mask = torch.zeros(1, 64, 96)
    mask[0, :20, 16:52] = 1.0                        # drawn on the loaded image (LoadImage's mask editor)
    source = encode(env, image)
    out = mask_schedule(env, source, mask)
    scheduled = out.result[0]
    assert out.ui is not None                        # the token-map preview
    repainted = ~scheduled.schedule.held().view(1, 4, 4)
    assert repainted[0, :2, :3].all() and repainted.sum() == 6   # crop offset 16 px: rows 0..1, columns 0..2
    clip = sample(env, schedule=scheduled)
    assert torch.equal(clip.tokens[:, ~repainted], source.tokens[:, ~repainted])
    assert not torch.equal(clip.tokens[:, repainted], source.tokens[:, repainted])


def test_video_reroll_with_keyframes_and_a_mask_frame_for_every_frame(env):
    video = torch.rand(9, 32, 32, 3)
    source = encode(env, video)
    keyframes = env.run(env.mods["sched"].URSAFrameSchedule, mode="custom keyframes", frames=9, start_time=1.0,
                        given_frames=1, keyframes="0:1.0", start_tokens=source).result[0]
    mask = torch.zeros(9, 32, 32)
    mask[5:, 8:16, 8:16] = 1.0                       # pixel frames 5..8: latent frame 2 only
    scheduled = mask_schedule(env, source, mask, strength=0.5, keyframes=keyframes).result[0]
    starts = scheduled.schedule.start
    assert starts[2, 1, 1] == 0.5 and (starts == 1).sum() == 47
    clip = sample(env, frames=9, schedule=scheduled)
    held = scheduled.schedule.held().view(3, 4, 4)
    assert torch.equal(clip.tokens[:, held], source.tokens[:, held])


def test_a_mask_that_repaints_nothing_moves_no_weights(env):
    source = encode(env, torch.rand(1, 32, 32, 3))
    scheduled = mask_schedule(env, source, torch.zeros(1, 32, 32)).result[0]
    loaded_before = list(env.loaded_models)
    clip = sample(env, schedule=scheduled)
    assert torch.equal(clip.tokens, source.tokens) and env.loaded_models == loaded_before


def test_mask_schedule_refusals_are_one_line(env):
    source = encode(env, torch.rand(5, 32, 32, 3))
    node = env.mods["mask"].URSAMaskSchedule
    with pytest.raises(ValueError, match="the mask has 3 frames but the video has 5"):
        mask_schedule(env, source, torch.ones(3, 32, 32))
    with pytest.raises(ValueError, match="a MASK, not an IMAGE"):
        mask_schedule(env, source, torch.ones(1, 32, 32, 3))
    base = {"source_tokens": ["1", 0], "mask": ["2", 0], "strength": 1.0, "grow": 0}
    assert env.validate(node, base) == []
    for bad, message in (({"strength": 1.5}, "bigger than max"),
                         ({"strength": float("nan")}, "Value nan smaller than min"),
                         ({"grow": 65}, "bigger than max of 64")):
        assert message in str(env.validate(node, {**base, **bad})), bad   # core's range check, on that input


def test_the_mask_schedule_sets_the_clip_the_sampler_makes(env):
    """Sizes are set once: the sampler makes the schedule's frames at its tokens' size, whatever its widgets say."""
    source = encode(env, torch.rand(5, 32, 32, 3))
    scheduled = mask_schedule(env, source, torch.ones(1, 8, 8)).result[0]   # 8x8: resized to 32x32 (warning)
    clip = sample(env, frames=1, width=64, height=16, schedule=scheduled)
    assert clip.tokens.shape == source.tokens.shape == (1, 2, 4, 4)
    other = encode(env, torch.rand(1, 16, 16, 3), width=16, height=16)
    with pytest.raises(ValueError, match="given_tokens are 16x16 px but the Mask Schedule's tokens are 32x32 px"):
        sample(env, schedule=scheduled, given_tokens=other)   # the refusal names the schedule connected


def test_outpainting_pads_and_the_composite_restores_the_source_outside(env):
    image = torch.rand(1, 32, 16, 3)
    padded, added = env.run(env.mods["mask"].URSAPadForOutpaint, image=image, left=8, top=0, right=8, bottom=0,
                            fill="edge").result
    assert padded.shape == (1, 32, 32, 3) and added.shape == (1, 32, 32) and added.sum() == 32 * 16
    source = encode(env, padded)
    scheduled = mask_schedule(env, source, added).result[0]
    clip = sample(env, schedule=scheduled)
    assert torch.equal(clip.tokens[..., 1:3], source.tokens[..., 1:3])
    decoded, _ = env.run(env.mods["tok"].URSATokenizerDecode, vq=env.handles[1], tokens=clip).result
    out = env.run(env.mods["mask"].URSARepaintComposite, source=padded, repainted=decoded, schedule=scheduled,
                  feather=4).result[0]
    assert torch.equal(out[:, :, 13:19], padded[:, :, 13:19])     # beyond the feather: the source exactly
    assert torch.equal(out[:, :, :8], decoded[:, :, :8])         # the repainted tokens: the decode
    assert env.validate(env.mods["mask"].URSAPadForOutpaint, {"image": ["1", 0], "left": -8, "top": 0, "right": 0,
                                                              "bottom": 0, "fill": "edge"})
    frame_wise = env.run(env.mods["sched"].URSAFrameSchedule, mode="text-to-image", frames=1, start_time=1.0,
                         given_frames=1, keyframes="").result[0]
    with pytest.raises(ValueError, match="needs the schedule of a URSA Mask Schedule"):
        env.run(env.mods["mask"].URSARepaintComposite, source=padded, repainted=decoded, schedule=frame_wise,
                feather=4)
