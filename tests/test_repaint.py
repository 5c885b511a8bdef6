"""Paint with a mask (issue 18) on the tiny checkpoints, CPU: the mask -> token rule, held tokens byte-identical at
every step, mask all ones = plain generation, all zeros = the source without a model call, the law of soft masks,
bad masks as one line, outpainting and the composite."""
import logging

import pytest
import torch
import torch.nn.functional as F

from tiny_fixtures import small_size
from ursa_core.checkpoint.loader import load_model
from ursa_core.errors import InputError
from ursa_core.visual_tokenizer.canvas import (PixelFit, composite, fit_mask, mask_for_canvas, pad_for_outpaint,
                                               repaint_weight)
from ursa_core.path.masks import check_mask, grow_levels, mask_start_times, token_levels
from ursa_core.path.metric_path import beta
from ursa_core.path.schedule import FrameSchedule, ScheduledTokens, StartTimes
from ursa_core.sampling import generate as generate_module
from ursa_core.sampling.generate import generate
from ursa_core.sampling.repaint import build_canvas, mask_schedule, repaint

STEPS = 4


@pytest.fixture(scope="module")
def ibq_model(tiny_ibq_dir):
    return load_model(tiny_ibq_dir, device="cpu", dtype="fp32")


def source_tokens(model, frames, seed=5, size=None):
    latent = model.geometry.latent_shape(frames, *(size or small_size(model)))
    return torch.randint(0, model.codebook_size, (1, *latent), generator=torch.Generator().manual_seed(seed))


def canvas_mask(model, tokens, boxes, value=1.0):
    """A pixel mask of the canvas of `tokens` with `value` in each (frame or None, y0, y1, x0, x1) pixel box."""
    s = model.geometry.spatial_stride
    frames = model.geometry.pixel_frames(tokens.shape[1])
    mask = torch.zeros(frames, tokens.shape[2] * s, tokens.shape[3] * s)
    for frame, y0, y1, x0, x1 in boxes:
        mask[slice(None) if frame is None else frame, y0:y1, x0:x1] = value
    return mask


def run_masked(model, tokens, mask, callback=None, keyframes=None, **kw):
    s, t = model.geometry.spatial_stride, model.geometry.temporal_stride
    scheduled = mask_schedule(tokens, mask, t, s, keyframes=keyframes, strength=kw.pop("strength", 1.0),
                              grow=kw.pop("grow", 0))
    frames = model.geometry.pixel_frames(tokens.shape[1])
    kw = dict(dict(steps=STEPS, seed=3, frames=frames, height=tokens.shape[2] * s, width=tokens.shape[3] * s), **kw)
    run = generate(model, "a red fox", schedule=scheduled.schedule, given_tokens=scheduled.given,
                   callback=callback, **kw)
    return run, scheduled.schedule


# ----------------------------------------------------------------------------------------------- the mapping rule
def test_a_token_is_repainted_if_any_of_its_pixels_is_and_pixel_frames_follow_the_1_plus_4k_rule():
    mask = torch.zeros(9, 16, 24)      # 9 pixel frames = 3 latent frames of 2 x 3 tokens (8 px)
    mask[0, 15, 23] = 1.0              # pixel frame 0 -> latent frame 0 alone
    mask[4, 0, 8] = 0.25               # pixel frames 1..4 -> latent frame 1
    mask[5, 9, 0] = 0.75               # pixel frames 5..8 -> latent frame 2
    levels = token_levels(mask, (3, 2, 3), temporal_stride=4, spatial_stride=8)
    expected = torch.zeros(3, 2, 3)
    expected[0, 1, 2], expected[1, 0, 1], expected[2, 1, 0] = 1.0, 0.25, 0.75
    assert torch.equal(levels, expected)
    one_for_all = token_levels(mask[4:5], (3, 2, 3), 4, 8)            # one mask frame stands for every frame
    assert torch.equal(one_for_all, expected[1].expand(3, 2, 3))


def test_the_image_tokenizer_maps_16_pixel_tokens():
    mask = torch.zeros(1, 32, 32)
    mask[0, 16, 31] = 1.0
    levels = token_levels(mask, (1, 2, 2), temporal_stride=1, spatial_stride=16)
    assert levels.tolist() == [[[0.0, 0.0], [0.0, 1.0]]]


def test_grow_dilates_in_tokens_and_strength_scales_the_start_level():
    levels = torch.zeros(2, 5, 5)
    levels[0, 2, 2] = 1.0
    grown = grow_levels(levels, 1)
    assert grown[0].sum() == 9 and grown[0, 1:4, 1:4].eq(1).all() and grown[1].eq(0).all()  # not in time
    mask = torch.zeros(1, 40, 40)
    mask[0, :8, :8], mask[0, 8:16, :8] = 1.0, 0.5
    starts = mask_start_times(mask, (1, 5, 5), 4, 8, strength=0.8)
    assert starts.start[0, 0, 0] == pytest.approx(0.2) and starts.start[0, 1, 0] == pytest.approx(0.6)
    assert starts.start[0, 2:].eq(1).all() and starts.held().sum() == 23


def test_a_mask_drawn_on_the_image_is_fit_to_the_canvas_as_the_image_is():
    mask = torch.zeros(1, 100, 200)
    mask[0, 50, 100] = 1.0                                  # one pixel in the middle of a 2:1 image
    cropped = fit_mask(mask, 40, 40, "crop")               # the middle 100 x 100, scaled to 40 x 40
    assert cropped.shape == (1, 40, 40) and cropped.max() == 1 and cropped[0, 19:22, 19:22].max() == 1
    padded = fit_mask(mask, 40, 40, "pad")                 # scaled to 40 x 20 with bars above and below
    assert padded[0, :10].eq(0).all() and padded[0, 30:].eq(0).all() and padded.max() == 1
    on_canvas = mask_for_canvas(mask, (40, 40), PixelFit(200, 100, "crop"))
    assert torch.equal(on_canvas, cropped)


def test_start_times_of_a_frame_schedule_combine_token_by_token_with_a_mask():
    frame_wise = StartTimes.from_schedule(FrameSchedule.keyframes(2, {0: 1.0}), (2, 2, 2))
    masked = StartTimes(torch.tensor([[[0.0, 1.0], [1.0, 1.0]], [[0.0, 0.5], [1.0, 1.0]]]))
    both = masked.combine(frame_wise)
    assert both.start[0].eq(1).all() and both.start[1].tolist() == [[0.0, 0.5], [1.0, 1.0]]
    assert both.frame_wise() is None and frame_wise.frame_wise() == (1.0, 0.0)
    with pytest.raises(InputError, match="hold on"):
        masked.combine(StartTimes.from_schedule(FrameSchedule.keyframes(2, {0: 1.0}, hold=False), (2, 2, 2)))
    with pytest.raises(InputError, match=r"map is \[2, 2, 2\] latent tokens .* clip is \[1, 2, 2\]"):
        masked.check_shape((1, 2, 2))


def test_a_frame_schedule_and_its_token_map_sample_the_same_tokens(tiny_model):
    """One object: a frame schedule is the token map constant over each frame, down to every draw."""
    given = source_tokens(tiny_model, 9)
    schedule = FrameSchedule.keyframes(3, {0: 1.0, 2: 0.9})
    h, w = small_size(tiny_model)
    kw = dict(frames=9, height=h, width=w, steps=STEPS, seed=2)
    by_frames = generate(tiny_model, "a fox", schedule=schedule, given_tokens=given, **kw)
    by_tokens = generate(tiny_model, "a fox", schedule=StartTimes.from_schedule(schedule, given.shape[1:]),
                         given_tokens=given, **kw)
    assert torch.equal(by_frames.tokens, by_tokens.tokens)
    assert torch.equal(by_frames.initial_tokens, by_tokens.initial_tokens)


# ----------------------------------------------------------------------------------------------- held tokens
def assert_held_at_every_step(run, starts, source, steps_seen):
    held = starts.held().view(source.shape[1:])
    assert len(steps_seen) == STEPS
    for tokens in steps_seen + [run.tokens, run.initial_tokens]:
        assert torch.equal(tokens[:, held], source[:, held])     # byte-identical, the last step included
    assert not torch.equal(run.tokens[:, ~held], source[:, ~held])  # and the rest was repainted


@pytest.mark.parametrize("kind, frames", [("fsq", 1), ("ibq", 1), ("fsq", 9)], ids=["image", "ibq-image", "video"])
def test_tokens_outside_the_mask_are_the_source_at_every_step(tiny_model, ibq_model, kind, frames):
    model = tiny_model if kind == "fsq" else ibq_model
    source = source_tokens(model, frames)
    s = model.geometry.spatial_stride
    mask = canvas_mask(model, source, [(None, s, 3 * s - 3, 2, 2 * s)])      # touches tokens (1..2, 0..1)
    seen = []
    run, starts = run_masked(model, source, mask, callback=lambda info: seen.append(info.tokens.clone()))
    assert int((~starts.held()).sum()) == 4 * source.shape[1]
    assert_held_at_every_step(run, starts, source, seen)


def test_tokens_outside_the_mask_are_the_source_with_keyframes(tiny_model):
    source, keyframe = source_tokens(tiny_model, 9), source_tokens(tiny_model, 9, seed=8)
    keyframes = ScheduledTokens(FrameSchedule.keyframes(3, {-1: 1.0}), keyframe)
    mask = canvas_mask(tiny_model, source, [(None, 0, 16, 0, 32)])             # the top half, every frame
    seen = []
    run, starts = run_masked(tiny_model, source, mask, callback=lambda info: seen.append(info.tokens.clone()),
                             keyframes=keyframes)
    expected_source = source.clone()
    expected_source[:, 2] = keyframe[:, 2]             # the last latent frame is the keyframe, held whole
    assert starts.held().view(3, 4, 4)[2].all() and not starts.held().view(3, 4, 4)[:2, :2].any()
    assert_held_at_every_step(run, starts, expected_source, seen)


def test_mask_all_ones_is_plain_generation_with_the_same_seed(tiny_model):
    source = source_tokens(tiny_model, 9)
    run, _ = run_masked(tiny_model, source, canvas_mask(tiny_model, source, [(None, 0, 32, 0, 32)]))
    h, w = small_size(tiny_model)
    plain = generate(tiny_model, "a red fox", frames=9, height=h, width=w, steps=STEPS, seed=3)
    assert torch.equal(run.tokens, plain.tokens)


def test_mask_all_zeros_returns_the_source_without_a_model_call(tiny_model, mocker, caplog):
    source = source_tokens(tiny_model, 5)
    spy = mocker.spy(tiny_model.transformer, "hidden_states")
    with caplog.at_level(logging.WARNING, logger="ursa_core"):
        run, _ = run_masked(tiny_model, source, canvas_mask(tiny_model, source, []))
    assert torch.equal(run.tokens, source) and spy.call_count == 0
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


# ----------------------------------------------------------------------------------------------- soft masks
class CopyingDenoiser:
    """Stands in for the transformer: predicts every token back as it is now (random weights predict noise, so
    their outputs cannot show a law of the start levels; a trained model is near this for nearly clean tokens)."""
    active = None

    def __init__(self, model, *args):
        self.k = model.codebook_size

    def __call__(self, tokens, branches, guidance):
        current = tokens.flatten(1)[:, self.active].reshape(-1)
        return lambda rows: 60.0 * F.one_hot(current[rows], self.k).float()


def test_changed_tokens_grow_with_the_repaint_level_as_the_path_says(ibq_model, mocker):
    """Law, not one draw: over 4096 tokens a level, the fraction of tokens that end unlike their source equals the
    path's chance of leaving the source when noised to t0 = 1 - level (within 5 standard deviations), and those
    chances grow with the level by many standard deviations."""
    mocker.patch.object(generate_module, "Denoiser", CopyingDenoiser)
    path = ibq_model.path
    levels = (0.02, 0.05, 0.1, 0.2, 0.4)  # the tiny codebook's path leaves a code fast: its informative range
    measured, expected, sigma = [], [], []
    for level in levels:
        changed = chance = var = 0.0
        for seed in range(16):
            source = source_tokens(ibq_model, 1, seed=seed, size=(256, 256))
            mask = canvas_mask(ibq_model, source, [(None, 0, 256, 0, 256)], value=level)
            CopyingDenoiser.active = torch.arange(source[0].numel())
            run, starts = run_masked(ibq_model, source, mask, seed=seed, steps=2)
            changed += float((run.tokens != source).sum())
            log_p = path.log_probs(source.flatten(), beta(starts.per_token.float(), path.c, path.alpha))
            p = 1 - log_p.gather(1, source.flatten()[:, None]).exp().squeeze(1).double()
            chance, var = chance + float(p.sum()), var + float((p * (1 - p)).sum())
        n = 16 * source[0].numel()
        measured.append(changed / n), expected.append(chance / n), sigma.append(var ** 0.5 / n)
    for m, e, s in zip(measured, expected, sigma):
        assert abs(m - e) < 5 * s, (levels, measured, expected)
    gaps = [b - a for a, b in zip(expected, expected[1:])]
    assert all(gap > 10 * max(sigma) for gap in gaps), (expected, sigma)
    assert measured == sorted(measured)


# ----------------------------------------------------------------------------------------------- bad masks
@pytest.mark.parametrize("mask, message", [
    (torch.zeros(0, 8, 8), r"the mask is empty \(shape \[0, 8, 8\]\)"),
    (torch.zeros(1, 8, 8, 3), r"\(a MASK, not an IMAGE\), got shape \[1, 8, 8, 3\]"),
    (torch.full((8, 8), 2.0), r"values from 0 \(keep\) to 1 \(repaint\), found values in \[2, 2\]"),
    (torch.full((8, 8), float("nan")), "or NaN"),
    (torch.zeros(8, 8, dtype=torch.uint8), "got torch.uint8 values: scale them to 0..1"),
    ("mask.png", "got str"),
])
def test_a_non_mask_is_one_line(mask, message):
    with pytest.raises(InputError, match=message) as err:
        check_mask(mask)
    assert "\n" not in str(err.value)


def test_mask_frames_unlike_the_video_name_both_counts():
    pixels = torch.rand(9, 16, 16, 3)
    with pytest.raises(InputError, match="the mask has 5 frames but the video has 9") as err:
        build_canvas(pixels, torch.ones(5, 16, 16))
    assert "\n" not in str(err.value)
    assert build_canvas(pixels, torch.ones(9, 16, 16)).mask.shape == (9, 16, 16)


def test_a_mask_video_given_with_tokens_is_read_up_to_the_frame_cap(tiny_model, tmp_path, monkeypatch):
    from ursa_core import rules
    from ursa_core.files.media import write_mp4
    source = source_tokens(tiny_model, 5)
    mask = canvas_mask(tiny_model, source, [])
    path = write_mp4(mask[:1].unsqueeze(-1).expand(9, *mask.shape[1:], 3), tmp_path / "mask.mp4")
    monkeypatch.setattr(rules, "MAX_FRAMES", 5)   # as a pixel source's mask is: frames past the cap are not read
    run = repaint(tiny_model, "a red fox", tokens=source, mask=str(path), steps=STEPS, seed=1)
    assert torch.equal(run.tokens, source)   # its 5 frames, all kept: the source, no "9 frames" refusal


def test_a_mask_of_another_size_is_resized_to_the_image_with_one_warning(caplog):
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0
    with caplog.at_level(logging.WARNING, logger="ursa_core"):
        canvas = build_canvas(torch.rand(1, 16, 24, 3), mask)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["warning: the mask is 4x4 but the image is 24x16: resized to the image (nearest)"]
    assert canvas.mask.shape == (1, 16, 24) and canvas.mask[0, :8, :12].eq(1).all() and canvas.mask.sum() == 96


# ----------------------------------------------------------------------------------------------- outpaint, composite
def test_outpainting_pads_the_canvas_and_repaints_only_the_added_pixels(tiny_model):
    image = torch.rand(1, 32, 16, 3)
    padded, added = pad_for_outpaint(image, 8, 8, 0, 0)
    assert padded.shape == (1, 32, 32, 3) and added.shape == (1, 32, 32)
    assert torch.equal(padded[:, :, 8:24], image) and torch.equal(padded[:, :, 0], image[:, :, 0])  # edge fill
    assert added[:, :, :8].eq(1).all() and added[:, :, 24:].eq(1).all() and added[:, :, 8:24].eq(0).all()
    assert pad_for_outpaint(image, 0, 0, 4, 0, fill="gray")[0][:, :4].eq(0.5).all()
    seen = []
    run = repaint(tiny_model, "a red fox", image=image, outpaint=(8, 8, 0, 0), steps=STEPS, seed=1,
                  callback=lambda info: seen.append(info.tokens.clone()))
    assert run.tokens.shape == (1, 1, 4, 4)                 # the source's own size after padding: 32 x 32
    source = run.initial_tokens
    assert all(torch.equal(t[..., 1:3], source[..., 1:3]) for t in seen + [run.tokens])
    assert not torch.equal(run.tokens[..., 0], source[..., 0])


def test_the_composite_keeps_source_pixels_beyond_the_feather_exactly():
    changed = torch.zeros(1, 4, 4, dtype=torch.bool)
    changed[0, 1, 1] = True                                  # pixels 8..15 of a 32 x 32 canvas
    weight = repaint_weight(changed, 1, 4, 8, feather=8)
    assert weight[0, 8:16, 8:16].eq(1).all() and weight[0, 25:].eq(0).all() and weight[0, :, 25:].eq(0).all()
    ramp = weight[0, 12, 16:26].tolist()                     # falling outwards from the region's right edge
    assert ramp == sorted(ramp, reverse=True) and 0 < ramp[0] < 1 and ramp[-1] == 0
    source, repainted = torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3)
    out = composite(source, repainted, weight)
    assert torch.equal(out[0, 25:], source[0, 25:]) and torch.equal(out[0, 8:16, 8:16], repainted[0, 8:16, 8:16])
    assert torch.equal(repaint_weight(changed, 1, 4, 8, feather=0)[0], changed[0].repeat_interleave(8, 0)
                       .repeat_interleave(8, 1).float())
