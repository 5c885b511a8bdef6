"""The library surface, used only through `import ursa_core` (as a researcher comparing with the reference would)."""
import pytest
import torch

import ursa_core as ursa


@pytest.fixture(scope="module")
def model(tiny_dir):
    return ursa.load(tiny_dir, device="cpu", dtype="fp32", attention="auto")


def test_generate_reports_tokens_initial_tokens_seed_and_settings(model):
    run = ursa.generate(model, "a red fox", frames=5, height=32, width=32, steps=3, seed=11, motion=9.0)
    assert isinstance(run, ursa.Generation) and run.seed == 11
    assert run.tokens.shape == run.initial_tokens.shape == (1, 2, 4, 4)
    assert not torch.equal(run.tokens, run.initial_tokens)  # sampling moved tokens away from the noise
    assert run.settings["steps"] == 3 and run.settings["sampler"] == "torch"
    assert run.settings["c"] == model.scheduler.c and run.settings["schedule_start"] == (0.0, 0.0)
    # the settings alone repeat the run
    again = ursa.generate(model, run.settings["prompt"], run.settings["negative_prompt"], seed=run.seed,
                          **{k: run.settings[k] for k in ("height", "width", "frames", "steps", "guidance",
                                                          "guidance_trunc", "c", "alpha", "shift", "motion")})
    assert torch.equal(again.tokens, run.tokens) and torch.equal(again.initial_tokens, run.initial_tokens)


def test_model_call_on_build_sequence_is_the_samplers_forward(model):
    run = ursa.generate(model, "a cat", frames=1, height=32, width=32, steps=2, seed=1)
    ids = model.prompts.encode(["a cat"])
    assert ids.shape == (1, model.config.max_prompt_length)
    sequence = ursa.build_sequence(model, ids, run.tokens)
    assert isinstance(sequence, ursa.ModelInput)
    assert sequence.input_ids.shape == (1, model.config.max_prompt_length + 1 + run.tokens[0].numel())
    assert int(sequence.input_ids[0, model.config.max_prompt_length]) == model.config.bov_token_id
    out = model(sequence, output_hidden_states=True)
    assert isinstance(out, ursa.TransformerOutput)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.allclose(out.logits, model(sequence))
    with pytest.raises(ursa.InputError, match="prompt ids must be"):
        ursa.build_sequence(model, ids[:, :3], run.tokens)


def test_path_functions(model):
    t = torch.tensor([0.0, 0.25, 0.5])
    assert torch.allclose(ursa.beta(t, 3.0, 0.9), 3.0 * (t / (1 - t)) ** 0.9)
    assert float(ursa.beta_dot(t, 3.0, 0.9)[0]) == 0.0
    assert torch.allclose(ursa.time_grid(4, 3.0), ursa.time_shift(torch.arange(4) / 4, 3.0))
    assert float(ursa.time_shift(torch.tensor(0.5), 1.0)) == 0.5  # shift 1 is the identity
    assert float(ursa.time_shift(torch.tensor(0.5), 3.0)) < 0.5   # lam > 1 lingers near t = 0
    x_t, x1 = torch.tensor([0, 7]), torch.tensor([5, 7])
    u = ursa.velocity(model.path, x_t, x1, 0.3)
    assert u.shape == (2, model.codebook_size) and bool((u >= 0).all())
    assert float(u[0, 0]) == 0.0 and float(u[0].sum()) > 0 and float(u[1].sum()) == 0.0
