"""The one entry point that turns a prompt into visual tokens: `generate(model, prompt, ...)` -> `Generation`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .. import rules
from ..checkpoint.loader import URSAModel
from ..errors import InputError
from ..path.metric_path import MetricPath
from ..path.schedule import FrameClocks, FrameSchedule, StartTimes, time_grid
from ..runtime import memory
from ..solver.euler import euler_step
from .denoiser import Denoiser
from .runners import BranchRunner, RunnerFactory, SingleDevice
from .settings import GenerationSettings, RunSettings, branches

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, *tags: int) -> int:
    """Independent 63-bit seeds per (seed, purpose, step) via splitmix64, so skipping a step shifts nothing."""
    x = int(seed) & _MASK64
    for tag in tags:
        x = (x + 0x9E3779B97F4A7C15 * (int(tag) + 1)) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x & ((1 << 63) - 1)


def uniforms(seed: int, tag: int, step: int, shape: Sequence[int]) -> torch.Tensor:
    """Uniforms drawn on the CPU, so a seed gives the same random numbers on every device."""
    gen = torch.Generator().manual_seed(derive_seed(seed, tag, step))
    return torch.rand(*shape, generator=gen, dtype=torch.float64).float()


TAG_INIT, TAG_NOISE, TAG_STEP = 1, 2, 3


@dataclass
class StepInfo:
    """What the per-step callback sees. Raising from the callback cancels generation."""
    step: int            # 0-based index of the step just finished
    steps: int
    t: float             # global clock at the start of the step
    tokens: torch.Tensor  # [B, T, h, w] after the step
    predicted: Optional[torch.Tensor]  # the x1 sample of this step ([B, T, h, w], held frames as given), or None


@dataclass
class GenerationPlan:
    """Everything fixed before the loop: shapes, schedule, start times, which tokens the sampler touches."""
    latent_shape: tuple[int, int, int]
    schedule: FrameSchedule
    starts: StartTimes             # every latent token's start time
    active: torch.Tensor           # visual token indices the sampler updates
    grid: torch.Tensor             # global time grid [steps] float64


def plan(model: URSAModel, settings: GenerationSettings, schedule: Optional[FrameSchedule]) -> GenerationPlan:
    """The clip of `settings` on `model` (its strides checked), with every token's start time (shift resolved)."""
    latent = settings.latent_shape(model.geometry)
    schedule = schedule or FrameSchedule.generate(latent[0])
    starts = StartTimes.from_schedule(schedule, latent)
    active = torch.nonzero(~starts.held()).squeeze(1)
    if active.numel() == 0:
        raise InputError("every frame of the schedule is held (start time 1): there is nothing to generate")
    shift = model.scheduler.shift if settings.shift is None else settings.shift
    return GenerationPlan(latent, schedule, starts, active, time_grid(settings.steps, shift))


def initial_tokens(model: URSAModel, path: MetricPath, plan_: GenerationPlan, batch: int, seed: int,
                   given: Optional[torch.Tensor]) -> torch.Tensor:
    """Uniform noise, with given frames copied (t0 = 1) or noised along the path to their t0."""
    k = model.codebook_size
    gen = torch.Generator().manual_seed(derive_seed(seed, TAG_INIT))
    tokens = torch.randint(0, k, (batch, *plan_.latent_shape), generator=gen)
    frames = plan_.schedule.given()
    if not frames:
        return tokens
    given = check_given(given, batch, plan_.latent_shape, k, frames)
    noise_u = uniforms(seed, TAG_NOISE, 0, tokens.shape)
    for f in frames:
        t0 = plan_.schedule.start[f]
        if t0 >= 1.0:
            tokens[:, f] = given[:, f]
        else:
            src = given[:, f].to(model.device)
            tokens[:, f] = path.sample(src, t0, noise_u[:, f].to(model.device)).cpu()
    return tokens


def check_given(given: Optional[torch.Tensor], batch: int, latent: tuple, k: int, frames: list) -> torch.Tensor:
    if given is None:
        raise InputError(f"the schedule gives latent frames {frames} but no given tokens were passed")
    given = torch.as_tensor(given)
    if given.ndim == 3:
        given = given.unsqueeze(0)
    if given.dtype.is_floating_point or given.ndim != 4 or tuple(given.shape[1:]) != tuple(latent) \
            or given.shape[0] not in (1, batch):
        raise InputError(f"given tokens must be an integer tensor [B, T, h, w] = [{batch}, {latent[0]}, "
                         f"{latent[1]}, {latent[2]}], got {given.dtype} {list(given.shape)}")
    used = given[:, frames]
    if used.min() < 0 or used.max() >= k:
        raise InputError(f"given tokens of frames {frames} must be codes in [0, {k - 1}], found values in "
                         f"[{int(used.min())}, {int(used.max())}]")
    return given.expand(batch, *latent).long()


def auto_chunk(codebook_size: int, device: torch.device, fused: bool = False) -> int:
    """Tokens per chunk so the live [chunk, K] tensors stay within a small budget: ~6 fp32 ones on the torch
    path, only the (guided) logit chunk on the fused path."""
    from .denoiser import HEAD_BLOCK

    budget = memory.LOGIT_BUDGET["cuda" if device.type == "cuda" else "cpu"]
    per_token = codebook_size * (4 if fused else 6 * 4)
    chunk = max(1, budget // per_token)
    return max(HEAD_BLOCK, chunk - chunk % HEAD_BLOCK) if chunk >= HEAD_BLOCK else chunk


def use_fused_sampler(sampler: str, device: torch.device) -> bool:
    from ..solver import triton_sampler

    rules.sampler(sampler, device, triton_sampler.available(device))
    return sampler == "triton" or (sampler == "auto" and triton_sampler.available(device))


def sampling_memory(model: URSAModel, latent_shape: Sequence[int], batch: int = 1, guidance: float = 7.0,
                    device: Optional[torch.device] = None) -> memory.MemoryEstimate:
    """What sampling needs on `device` (default: the model's) on top of the loaded weights."""
    device = device or model.device
    tokens = batch * latent_shape[0] * latent_shape[1] * latent_shape[2]
    return memory.estimate(model.config, tokens, dtype=model.transformer.dtype, device_type=device.type,
                           branches=branches(guidance), include_weights=False,
                           math_attention=model.transformer.attn_implementation == "math")


def check_memory(model: URSAModel, plan_: GenerationPlan, batch: int, guidance: float) -> None:
    """Refuse a run whose activations cannot fit next to the loaded weights (ursa_core.runtime.memory)."""
    need = sampling_memory(model, plan_.latent_shape, batch, guidance)
    frames = model.geometry.pixel_frames(plan_.latent_shape[0])
    memory.check_fits(need, model.device, f"sampling {frames} frame(s) of {list(plan_.latent_shape)} latents")


def _prompt_ids(model: URSAModel, prompt, negative, motion):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InputError("at least one prompt is needed")
    negative = "" if negative is None else negative
    negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
    if len(negatives) != len(prompts):
        raise InputError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    # The motion prefix belongs to the positive prompt only (the reference's README/demo usage).
    return model.prompts.encode(prompts, motion), model.prompts.encode(negatives)


@dataclass(frozen=True)
class Generation:
    """What `generate` returns: the tokens, where sampling started, and the settings that repeat the run."""
    tokens: torch.Tensor          # [B, T, h, w] int64 on the CPU
    initial_tokens: torch.Tensor  # [B, T, h, w] before the first step: noise, given frames placed or noised
    seed: int
    settings: RunSettings         # every setting as used; read it like a dict (run.settings["steps"])


@torch.no_grad()
def generate(model: URSAModel, prompt: str | Sequence[str] = "", negative_prompt: str | Sequence[str] | None = None,
             settings: Optional[GenerationSettings] = None, *, schedule: Optional[FrameSchedule] = None,
             given_tokens: Optional[torch.Tensor] = None,
             prompt_ids: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
             callback: Optional[Callable[[StepInfo], None]] = None, parallel: Optional[RunnerFactory] = None,
             **changes) -> Generation:
    """Sample visual tokens [B, T, H/s, W/s] for `prompt` (a string or a list: B prompts) -> `Generation`.

    `settings` (a GenerationSettings) says how; keywords change single fields of it (`frames=49, seed=7`: the
    fields and their defaults are GenerationSettings'). `c`, `alpha`, `shift` default to the checkpoint's scheduler
    config. `schedule` gives each latent frame a start time (default: all from noise); frames with start > 0 take
    their tokens from `given_tokens` [B|1, T, h, w]. `prompt_ids` (cond, uncond) [B, L] bypasses tokenization.
    `callback(StepInfo)` runs after every step; an exception raised there stops generation (cancel).
    The result depends only on the seed (and device numerics), not on `chunk_tokens`. `sampler` picks the jump
    step's implementation: "torch" (chunked tensors), "triton" (fused CUDA kernels) or "auto" (triton on CUDA).
    `parallel` (a runners.RunnerFactory, e.g. a parallel.distributed.Layout, the same call on every rank) shares
    this one generation between ranks or devices; every rank returns the same tokens. Default: one device.
    """
    settings = GenerationSettings.build(settings, **changes).with_checkpoint_path(model.scheduler)
    plan_ = plan(model, settings, schedule)
    cond_ids, uncond_ids = prompt_ids if prompt_ids is not None else _prompt_ids(model, prompt, negative_prompt,
                                                                                  settings.motion)
    check_memory(model, plan_, cond_ids.shape[0], settings.guidance)
    fused = use_fused_sampler(settings.sampler, model.device)
    placement = parallel or SingleDevice()
    record = RunSettings.of(
        settings, sampler="triton" if fused else "torch",
        chunk_tokens=int(settings.chunk_tokens or auto_chunk(model.codebook_size, model.device, fused)),
        schedule_start=plan_.schedule.start, hold=plan_.schedule.hold,
        prompt=None if prompt_ids is not None else prompt,
        negative_prompt=None if prompt_ids is not None else negative_prompt, parallel=placement.describe())
    path = model.path.with_params(c=settings.c, alpha=settings.alpha).to(model.device)
    start = initial_tokens(model, path, plan_, cond_ids.shape[0], settings.seed, given_tokens)
    runner = placement.runner(model, plan_)
    denoiser = Denoiser(model, cond_ids, uncond_ids if settings.max_branches == 2 else None, plan_.latent_shape,
                        runner)
    tokens = _sample(model, path, plan_, denoiser, runner, start, record, callback)
    return Generation(tokens, start, int(settings.seed), record)


def _sample(model: URSAModel, path: MetricPath, plan_: GenerationPlan, denoiser: Denoiser, runner: BranchRunner,
            tokens: torch.Tensor, settings: RunSettings, callback) -> torch.Tensor:
    """The step loop: every token's clock, the branches the step runs, the transformer pass and the jump of the
    tokens sampled here, every token's new value; the callback after each step."""
    batch, steps = tokens.shape[0], settings.steps
    flat_active = tokens.flatten(1)[:, plan_.active]
    token_starts = plan_.starts.per_token[plan_.active]
    for step in range(steps):
        final = step == steps - 1
        clocks = FrameClocks.at_step(token_starts, plan_.starts.hold, plan_.grid, step, path)
        t = float(plan_.grid[step])
        predicted = None
        # Decided on every token's clock, so all ranks of a parallel run skip the same steps.
        if final or not (settings.skip_noop_steps and clocks.idle()):
            count = branches(settings.guidance, t, settings.guidance_trunc)
            here = runner.sampled_here(count)
            u = uniforms(settings.seed, TAG_STEP, step, (3, batch, tokens[0].numel()))[:, :, plan_.active][:, :, here]
            new, x1 = euler_step(path, denoiser(tokens, count, settings.guidance),
                                 flat_active[:, here].reshape(-1).to(model.device),
                                 clocks.for_batch(here, batch, model.device), u.reshape(3, -1).to(model.device),
                                 final, settings.chunk_tokens, fused=settings.sampler == "triton")
            flat_active = runner.gather(new.view(batch, -1), count)
            tokens = _scatter(tokens, plan_.active, flat_active)
            predicted = _scatter(tokens, plan_.active, runner.gather(x1.view(batch, -1), count))
        if callback is not None:
            callback(StepInfo(step, steps, t, tokens, predicted))
    return tokens


def _scatter(tokens: torch.Tensor, active: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = tokens.clone()
    out.flatten(1)[:, active] = values
    return out
