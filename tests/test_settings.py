"""One typed settings object per generation, the branch-runner seam of the sampling loop, the path's own clock and
per-token start times (tiny checkpoint, CPU)."""
import json
import math

import pytest
import torch

from ursa_core.errors import InputError
from ursa_core.path.schedule import FrameSchedule, StartTimes
from ursa_core.sampling.generate import generate
from ursa_core.sampling.runners import SingleDevice, SingleDeviceRunner
from ursa_core.sampling.settings import GenerationSettings, branches

SMALL = dict(height=32, width=32, steps=4)


@pytest.mark.parametrize("changes, message", [
    (dict(steps=0), "steps=0 is not allowed"),
    (dict(guidance=math.nan), "guidance=nan is not allowed"),
    (dict(guidance_trunc=1.5), "guidance_trunc=1.5 is not allowed"),
    (dict(shift=-1.0), "shift=-1.0 is not allowed"),
    (dict(seed=-1), "seed=-1 is not allowed"),
    (dict(sampler="fast"), "sampler='fast' is not allowed"),
    (dict(chunk_tokens=0), "chunk_tokens=0 is not allowed"),
])
def test_settings_are_checked_once_when_built(changes, message):
    with pytest.raises(InputError, match=message):
        GenerationSettings(**changes)
    with pytest.raises(InputError, match=message):   # a change of a built object passes the same rules
        GenerationSettings.build(GenerationSettings(), **changes)


def test_an_unknown_setting_is_a_type_error():
    with pytest.raises(TypeError):
        GenerationSettings.build(None, cfg=7.0)   # the scale is `guidance` below the front ends


def test_two_branches_or_one_is_decided_by_one_rule():
    assert [branches(7.0, t, 0.9) for t in (0.0, 0.89, 0.9, 0.95)] == [2, 2, 1, 1]
    assert branches(1.0, 0.0, 0.9) == 1 and branches(0.5) == 1    # guidance <= 1: the conditional branch alone
    settings = GenerationSettings(guidance=3.0, guidance_trunc=0.5)
    assert settings.max_branches == 2 and settings.branches_at(0.2) == 2 and settings.branches_at(0.6) == 1
    assert GenerationSettings(guidance=1.0).max_branches == 1


def test_run_settings_read_like_a_dict_and_serialise(tiny_model):
    run = generate(tiny_model, "a fox", frames=5, seed=3, **SMALL)
    record = run.settings
    assert record["steps"] == 4 and record["c"] == tiny_model.scheduler.c and record["sampler"] == "torch"
    assert "guidance" in record and record.get("missing") is None and set(record) >= {"frames", "prompt", "hold"}
    again = json.loads(json.dumps(dict(record)))
    assert again["schedule_start"] == [0.0, 0.0] and again["seed"] == 3 and again["parallel"] is None
    with pytest.raises(KeyError):
        record["cfg"]


def test_settings_object_and_keywords_sample_the_same(tiny_model):
    settings = GenerationSettings(frames=5, seed=2, guidance=3.0, **SMALL)
    by_object = generate(tiny_model, "a fox", settings=settings).tokens
    assert torch.equal(by_object, generate(tiny_model, "a fox", frames=5, seed=2, guidance=3.0, **SMALL).tokens)
    # keywords change single fields of a given object
    assert torch.equal(generate(tiny_model, "a fox", settings=settings, seed=5).tokens,
                       generate(tiny_model, "a fox", frames=5, seed=5, guidance=3.0, **SMALL).tokens)


class RecordingRunner(SingleDeviceRunner):
    """Samples every active token through an index tensor (not the single device's slice) and records each
    step's branch count: a stand-in for any other placement behind the same seam."""

    def __init__(self, keep, active):
        super().__init__(keep)
        self.active, self.branches = active, []

    def sampled_here(self, branches):
        self.branches.append(branches)
        return torch.arange(self.active.numel())


class Recording(SingleDevice):
    def runner(self, model, plan):
        self.made = RecordingRunner(super().runner(model, plan).keep, plan.active)
        return self.made

    def describe(self):
        return {"recording": True}


def test_the_loop_runs_through_the_runner_seam(tiny_model):
    """Another placement plugs in without a branch in the loop: the same tokens, the branch count of every executed
    step from the one rule, and its description in the settings."""
    placement = Recording()
    run = generate(tiny_model, "a fox", frames=5, seed=4, guidance=5.0, guidance_trunc=0.6, parallel=placement,
                   **SMALL)
    assert torch.equal(run.tokens, generate(tiny_model, "a fox", frames=5, seed=4, guidance=5.0, guidance_trunc=0.6,
                                            **SMALL).tokens)
    grid = [0.0, 0.25, 0.5, 0.75]   # shift 1: step 0 (t = 0, nothing moves) runs no forward
    assert placement.made.branches == [branches(5.0, t, 0.6) for t in grid[1:]] == [2, 2, 1]
    assert run.settings["parallel"] == {"recording": True}


def test_the_path_gives_its_own_clock(tiny_model):
    from ursa_core.path.metric_path import beta, beta_dot

    path = tiny_model.path.with_params(c=2.5, alpha=0.8)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    clock = path.clock(t)
    assert torch.equal(clock.beta[:2], beta(t[:2], 2.5, 0.8)) and torch.isfinite(clock.beta).all()
    assert torch.equal(clock.beta_dot[:2], beta_dot(t[:2], 2.5, 0.8)) and float(clock.beta_dot[0]) == 0.0


def test_start_times_spread_a_frame_schedule_over_its_tokens():
    schedule = FrameSchedule.keyframes(3, {0: 1.0, 2: 0.5})
    starts = StartTimes.from_schedule(schedule, (3, 2, 2))
    assert starts.per_token.tolist() == [1.0] * 4 + [0.0] * 4 + [0.5] * 4
    assert starts.held().tolist() == [True] * 4 + [False] * 8
    loose = StartTimes.from_schedule(FrameSchedule.keyframes(3, {0: 1.0}, hold=False), (3, 2, 2))
    assert not loose.held().any()
    with pytest.raises(InputError, match="the schedule has 3 latent frames but the clip has 2"):
        StartTimes.from_schedule(schedule, (2, 2, 2))


def test_the_transformer_owns_its_rotary_tables(tiny_model):
    from ursa_core.model.rope import rotary_cos_sin, sequence_positions

    config = tiny_model.config
    cos, sin = tiny_model.transformer.rotary_tables((2, 3, 4))
    positions = sequence_positions(config.max_prompt_length, (2, 3, 4))
    want_cos, want_sin = rotary_cos_sin(positions, config.head_dim, config.rope_theta, tiny_model.transformer.dtype)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
    assert cos.shape == (config.max_prompt_length + 1 + 24, config.head_dim)
    assert not list(tiny_model.transformer.rotary.parameters())   # the state dict stays the official one
