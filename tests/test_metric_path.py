"""Metric path, time grid and the CTMC jump law against float64 references on random inputs."""
import math

import pytest
import torch

from ursa_core.errors import InputError
from ursa_core.path.metric_path import MetricPath, beta, beta_dot, sample_from_weights, velocity
from ursa_core.path.schedule import FrameClocks, time_grid
from ursa_core.solver.euler import euler_step


@pytest.mark.parametrize("c,alpha", [(3.0, 0.9), (1.5, 1.3), (5.0, 0.5)])
def test_beta_and_derivative(c, alpha):
    t = torch.rand(200, dtype=torch.float64) * 0.98 + 0.01
    expected = [c * (x / (1 - x)) ** alpha for x in t.tolist()]
    assert torch.allclose(beta(t, c, alpha), torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    # beta_dot against a central finite difference of beta (independent of the closed form).
    eps = 1e-6
    numeric = (beta(t + eps, c, alpha) - beta(t - eps, c, alpha)) / (2 * eps)
    assert torch.allclose(beta_dot(t, c, alpha), numeric, rtol=1e-6)
    assert beta_dot(torch.tensor(0.0, dtype=torch.float64), c, alpha) == 0
    assert beta(torch.tensor(0.0), c, alpha) == 0


@pytest.mark.parametrize("steps,shift", [(25, 1.0), (25, 3.0), (50, 5.0), (1, 2.0)])
def test_time_grid(steps, shift):
    grid = time_grid(steps, shift)
    expected = []
    for i in range(steps):
        sigma = 1 - i / steps
        expected.append(1 - shift * sigma / (1 + (shift - 1) * sigma))
    assert torch.allclose(grid, torch.tensor(expected, dtype=torch.float64), atol=1e-15)
    assert grid[0] == 0 and grid[-1] < 1 and bool((grid[1:] > grid[:-1]).all())


def test_time_grid_spec_examples():
    assert torch.allclose(time_grid(25, 1.0), torch.arange(25, dtype=torch.float64) / 25)
    g = time_grid(25, 3.0)
    assert abs(float(g[1]) - 0.0137) < 1e-4 and abs(float(g[-1]) - 0.889) < 1e-3
    with pytest.raises(InputError, match="steps"):
        time_grid(0, 1.0)


def random_path(k=7, d=3, c=3.0, alpha=0.9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return emb, MetricPath(emb, c=c, alpha=alpha, compute_dtype=torch.float64)


def test_distances_and_probabilities_float64():
    emb, path = random_path(k=11, d=4)
    unit = emb / emb.norm(dim=-1, keepdim=True)
    codes = torch.tensor([0, 3, 10, 3])
    expected = ((unit[None, :, :] - unit[codes][:, None, :]) ** 2).sum(-1)
    assert torch.allclose(path.distances(codes), expected, atol=1e-12)
    b = torch.tensor([0.0, 0.5, 4.0, 40.0], dtype=torch.float64)
    p = path.log_probs(codes, b).exp()
    ref = torch.exp(-b[:, None] * expected)
    assert torch.allclose(p, ref / ref.sum(-1, keepdim=True), atol=1e-12)
    assert torch.allclose(p[0], torch.full((11,), 1 / 11, dtype=torch.float64))  # t = 0 is uniform


def test_zero_code_stays_zero_vector():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    path = MetricPath(emb, c=1, alpha=1)
    assert torch.allclose(path.distances(torch.tensor([0]))[0], torch.tensor([0.0, 1.0, 1.0]))


def test_sample_from_weights_law():
    weights = torch.tensor([[0.0, 1.0, 3.0, 0.0, 4.0]]).expand(80000, -1)
    draws = sample_from_weights(weights, torch.rand(80000, generator=torch.Generator().manual_seed(1)))
    freq = torch.bincount(draws, minlength=5).double() / 80000
    assert freq[0] == 0 and freq[3] == 0
    assert torch.allclose(freq, torch.tensor([0, 1 / 8, 3 / 8, 0, 4 / 8], dtype=torch.float64), atol=0.01)


def exact_jump_law(emb, logits, x_t, b, bd, h):
    """P(next token = y) for one token, in float64 with explicit sums over x1 and candidates."""
    k = emb.shape[0]
    unit = emb / emb.norm(dim=-1, keepdim=True)
    d = ((unit[:, None] - unit[None, :]) ** 2).sum(-1)  # d[x, y]
    pi = torch.softmax(logits.double(), -1)
    law = torch.zeros(k, dtype=torch.float64)
    for x1 in range(k):
        p = torch.softmax(-b * d[:, x1], -1)
        u = torch.tensor([p[x] * bd * max(0.0, float(d[x_t, x1] - d[x, x1])) if x != x_t else 0.0
                          for x in range(k)], dtype=torch.float64)
        lam = float(u.sum())
        jump = 1 - math.exp(-h * lam)
        if lam > 0:
            law += pi[x1] * jump * u / lam
        law[x_t] += pi[x1] * (1 - jump)
    return law


def test_jump_law_statistical():
    emb, path = random_path(k=6, d=3, seed=3)
    n = 60000
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.2, 1.0], dtype=torch.float64)
    x_t = torch.full((n,), 4)
    b, bd, h = 2.5, 6.0, 0.08
    clocks = FrameClocks.constant(n, b, bd, h)
    u = torch.rand(3, n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    new, _ = euler_step(path, lambda sl: logits.expand(len(range(n)[sl]), -1), x_t, clocks, u, False, 8192)
    freq = torch.bincount(new, minlength=6).double() / n
    law = exact_jump_law(emb, logits, 4, b, bd, h)
    sigma = (law * (1 - law) / n).sqrt()
    assert bool(((freq - law).abs() <= 5 * sigma + 1e-9).all()), (freq, law)
    assert law[4] < 0.99  # the test is not vacuous: tokens do move


def test_final_step_returns_x1_and_chunking_is_invariant():
    emb, path = random_path(k=9, d=4, seed=5)
    n = 500
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(n, 9, generator=gen, dtype=torch.float64)
    x_t = torch.randint(0, 9, (n,), generator=gen)
    clocks = FrameClocks.constant(n, 1.0, 3.0, 0.2)
    u = torch.rand(3, n, generator=gen, dtype=torch.float64)
    a, x1a = euler_step(path, lambda sl: logits[sl], x_t, clocks, u, False, 7)
    b, x1b = euler_step(path, lambda sl: logits[sl], x_t, clocks, u, False, 10_000)
    assert torch.equal(a, b) and torch.equal(x1a, x1b)
    final, x1 = euler_step(path, lambda sl: logits[sl], x_t, clocks, u, True, 13)
    assert torch.equal(final, x1) and torch.equal(x1, x1a)
    # a token whose sample x1 equals x_t never moves
    same = x1a == x_t
    assert torch.equal(a[same], x_t[same])


def test_guided_logits_in_hidden_space_equal_logit_space_guidance(tiny_model):
    """Production guides hidden states and projects once; that equals z_u + g (z_c - z_u) on the logits."""
    from ursa_core.sampling.denoiser import guided_logits
    transformer = tiny_model.transformer
    gen = torch.Generator().manual_seed(0)
    cond, uncond = (torch.randn(5, tiny_model.config.hidden_size, generator=gen) for _ in range(2))
    z_c, z_u = transformer.visual_logits(cond), transformer.visual_logits(uncond)
    expected = z_u + 7.0 * (z_c - z_u)
    assert torch.allclose(guided_logits(transformer, cond, uncond, 7.0), expected, atol=1e-4)
    assert not torch.allclose(expected, z_c, atol=1e-2)  # guidance does change the logits


def test_velocity_is_the_kinetic_optimal_rate():
    emb, path = random_path(k=7, d=3, seed=4)
    x_t, x1, t = torch.tensor([2, 5]), torch.tensor([4, 5]), 0.4
    u = velocity(path, x_t, x1, t)
    d = torch.cdist(torch.nn.functional.normalize(emb, dim=-1), torch.nn.functional.normalize(emb, dim=-1)) ** 2
    b, bd = beta(torch.tensor(t), path.c, path.alpha), beta_dot(torch.tensor(t), path.c, path.alpha)
    for row, (xt, target) in enumerate(zip(x_t.tolist(), x1.tolist())):
        p_t = torch.softmax(-b * d[:, target], dim=0)
        expected = bd * p_t * (d[xt, target] - d[:, target]).clamp_min(0)
        expected[xt] = 0
        assert torch.allclose(u[row].double(), expected.double(), atol=1e-5)
    assert u[1].abs().sum() == 0  # x_t == x1: nothing pulls the token anywhere
