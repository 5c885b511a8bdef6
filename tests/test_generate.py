"""Load -> generate end to end with the tiny checkpoint: tasks, held frames, determinism, chunking, CFG."""
import pytest
import torch

from tiny_fixtures import small_size
from ursa_core.errors import InputError
from ursa_core.path.schedule import FrameSchedule
from ursa_core.sampling.generate import generate

STEPS = 4


def run(model, **kw):
    h, w = small_size(model)
    kw.setdefault("height", h)
    kw.setdefault("width", w)
    kw.setdefault("steps", STEPS)
    return generate(model, kw.pop("prompt", "a red fox"), **kw).tokens


@pytest.mark.parametrize("frames,latent_t", [(1, 1), (5, 2), (9, 3)])
def test_text_to_image_and_video_shapes(tiny_model, frames, latent_t):
    tokens = run(tiny_model, frames=frames, motion=9.0 if frames > 1 else None)
    assert tokens.shape == (1, latent_t, 4, 4) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < tiny_model.codebook_size


def test_same_seed_same_tokens_other_seed_differs(tiny_model):
    a, b, c = run(tiny_model, frames=5, seed=3), run(tiny_model, frames=5, seed=3), run(tiny_model, frames=5, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_chunked_equals_one_chunk(tiny_model):
    whole = run(tiny_model, frames=9, seed=11, chunk_tokens=10_000)
    chunked = run(tiny_model, frames=9, seed=11, chunk_tokens=7)
    assert torch.equal(whole, chunked)


def given_clip(model, frames, seed=5):
    latent = model.geometry.latent_shape(frames, *small_size(model))
    return torch.randint(0, model.codebook_size, (1, *latent), generator=torch.Generator().manual_seed(seed))


def test_image_to_video_holds_first_frame(tiny_model):
    given = given_clip(tiny_model, 9)
    tokens = run(tiny_model, frames=9, schedule=FrameSchedule.image_to_video(3), given_tokens=given)
    assert torch.equal(tokens[:, 0], given[:, 0])
    assert not torch.equal(tokens[:, 1:], given[:, 1:])


def test_interpolation_holds_first_and_last(tiny_model):
    given = given_clip(tiny_model, 9)
    tokens = run(tiny_model, frames=9, schedule=FrameSchedule.interpolation(3), given_tokens=given)
    assert torch.equal(tokens[:, 0], given[:, 0]) and torch.equal(tokens[:, 2], given[:, 2])


def test_extension_and_noised_keyframes(tiny_model):
    given = given_clip(tiny_model, 9)
    tokens = run(tiny_model, frames=9, schedule=FrameSchedule.extension(3, 2), given_tokens=given)
    assert torch.equal(tokens[:, :2], given[:, :2])
    noised = FrameSchedule.keyframes(3, {0: 0.95, 2: 1.0})
    out = run(tiny_model, frames=9, schedule=noised, given_tokens=given)
    assert torch.equal(out[:, 2], given[:, 2])


def test_reference_mode_resamples_given_frames(tiny_model):
    """hold=False is the reference pipeline: given frames are an initialisation, resampled at the last step."""
    given = given_clip(tiny_model, 5)
    schedule = FrameSchedule.keyframes(2, {0: 1.0}, hold=False)
    tokens = run(tiny_model, frames=5, schedule=schedule, given_tokens=given)
    assert not torch.equal(tokens[:, 0], given[:, 0])  # random model: the last step re-samples frame 0


def test_guidance_trunc_zero_equals_no_guidance(tiny_model, mocker):
    spy = mocker.spy(tiny_model.transformer, "hidden_states")
    a = run(tiny_model, frames=5, seed=2, guidance=7.0, guidance_trunc=0.0)
    batches = [call.args[0].shape[0] for call in spy.call_args_list]
    assert batches and set(batches) == {1}  # one branch only once t >= guidance_trunc
    b = run(tiny_model, frames=5, seed=2, guidance=1.0)
    assert torch.equal(a, b)
    spy.reset_mock()
    c = run(tiny_model, frames=5, seed=2, guidance=7.0, guidance_trunc=1.0)
    assert {call.args[0].shape[0] for call in spy.call_args_list} == {2}
    assert not torch.equal(a, c)


def test_truncation_switches_mid_run(tiny_model, mocker):
    spy = mocker.spy(tiny_model.transformer, "hidden_states")
    run(tiny_model, frames=1, steps=10, guidance=5.0, guidance_trunc=0.5, shift=1.0)
    batches = [call.args[0].shape[0] for call in spy.call_args_list]
    # grid t = i/10; step 0 (t=0) is a no-op and skipped; t in {0.1..0.4} guided, {0.5..0.9} not.
    assert batches == [2, 2, 2, 2, 1, 1, 1, 1, 1]


def test_callback_sees_every_step_and_can_cancel(tiny_model):
    seen = []
    run(tiny_model, frames=1, callback=lambda info: seen.append((info.step, info.steps)))
    assert seen == [(i, STEPS) for i in range(STEPS)]

    class Cancel(Exception):
        pass

    def cancel(info):
        if info.step == 1:
            raise Cancel()
    with pytest.raises(Cancel):
        run(tiny_model, frames=1, callback=cancel)


def test_skipping_noop_first_step_changes_nothing(tiny_model):
    a = run(tiny_model, frames=5, seed=9, skip_noop_steps=True)
    b = run(tiny_model, frames=5, seed=9, skip_noop_steps=False)
    assert torch.equal(a, b)


def test_batch_of_prompts(tiny_model):
    tokens = run(tiny_model, frames=1, prompt=["a fox", "a cat"], negative_prompt=["", "blurry"])
    assert tokens.shape[0] == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(frames=4), "frames=4"),
    (dict(frames=0), "frames=0"),
    (dict(height=30), "height=30"),
    (dict(width=12), "width=12"),
    (dict(steps=0), "steps=0"),
    (dict(guidance=-1.0), "guidance=-1.0"),
    (dict(guidance_trunc=1.5), "guidance_trunc=1.5"),
])
def test_bad_arguments_are_named(tiny_model, kwargs, match):
    with pytest.raises(InputError, match=match):
        run(tiny_model, **kwargs)


def test_schedule_and_given_token_errors(tiny_model):
    with pytest.raises(InputError, match="schedule has 2 latent frames but the clip has 3"):
        run(tiny_model, frames=9, schedule=FrameSchedule.generate(2))
    with pytest.raises(InputError, match="no given tokens"):
        run(tiny_model, frames=9, schedule=FrameSchedule.image_to_video(3))
    with pytest.raises(InputError, match=r"\[1, 3, 4, 4\]"):
        run(tiny_model, frames=9, schedule=FrameSchedule.image_to_video(3), given_tokens=torch.zeros(1, 2, 4, 4))
    bad = given_clip(tiny_model, 9)
    bad[0, 0, 0, 0] = tiny_model.codebook_size
    with pytest.raises(InputError, match="codes in"):
        run(tiny_model, frames=9, schedule=FrameSchedule.image_to_video(3), given_tokens=bad)
    with pytest.raises(InputError, match="outside"):
        FrameSchedule.keyframes(3, {5: 1.0})


def test_a_schedule_holding_every_token_returns_the_given_tokens_without_a_model_call(tiny_model, mocker, caplog):
    """Issue 18: holding everything (a mask that repaints nothing) is no error: the given tokens come back, with one
    warning line, and the transformer never runs."""
    spy = mocker.spy(tiny_model.transformer, "hidden_states")
    given = given_clip(tiny_model, 1)
    with caplog.at_level("WARNING", logger="ursa_core"):
        tokens = run(tiny_model, frames=1, schedule=FrameSchedule((1.0,)), given_tokens=given)
    assert torch.equal(tokens, given) and spy.call_count == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "every token is held (start time 1, e.g. a mask that repaints nothing): the result is the given tokens, "
        "no model call"]


def test_head_blocks_are_chunk_independent():
    from ursa_core.sampling.denoiser import HEAD_BLOCK, head_in_blocks
    calls = []

    def head(rows):
        calls.append((rows.start, rows.stop))
        return torch.arange(rows.start, rows.stop).float().unsqueeze(1)
    total = 2 * HEAD_BLOCK + 17
    out = head_in_blocks(head, total, slice(HEAD_BLOCK - 3, HEAD_BLOCK + 5))
    assert out.squeeze(1).tolist() == list(range(HEAD_BLOCK - 3, HEAD_BLOCK + 5))
    assert calls == [(0, HEAD_BLOCK), (HEAD_BLOCK, 2 * HEAD_BLOCK)]  # only whole aligned blocks are computed
    assert head_in_blocks(head, total, slice(2 * HEAD_BLOCK, 3 * HEAD_BLOCK)).shape[0] == 17
