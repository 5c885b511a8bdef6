"""The one entry point that turns a prompt into visual tokens: `generate(model, prompt, ...)` -> `Generation`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence

import torch

from .. import rules
from ..checkpoint.loader import URSAModel
from ..errors import InputError
from ..model.sequence import predicting_positions, rotary_angles, sequence_ids
from ..path.metric_path import MetricPath
from ..path.schedule import FrameClocks, FrameSchedule, time_grid
from ..runtime import memory
from ..solver.euler import euler_step

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
    """Everything fixed before the loop: shapes, schedule, clocks, which tokens the sampler touches."""
    latent_shape: tuple[int, int, int]
    schedule: FrameSchedule
    active: torch.Tensor           # visual token indices the sampler updates
    token_frame: torch.Tensor      # latent frame of each active token
    grid: torch.Tensor             # global time grid [steps] float64



def plan(model: URSAModel, frames: int, height: int, width: int, steps: int, shift: float,
         schedule: Optional[FrameSchedule]) -> GenerationPlan:
    latent = model.geometry.latent_shape(frames, height, width)
    schedule = schedule or FrameSchedule.generate(latent[0])
    schedule.check_frames(latent[0])
    per_frame = latent[1] * latent[2]
    frame_of_token = torch.arange(latent[0] * per_frame) // per_frame
    held = torch.zeros(latent[0], dtype=torch.bool)
    held[schedule.held()] = True
    active = torch.nonzero(~held[frame_of_token]).squeeze(1)
    if active.numel() == 0:
        raise InputError("every frame of the schedule is held (start time 1): there is nothing to generate")
    return GenerationPlan(latent, schedule, active, frame_of_token[active], time_grid(steps, shift))


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


class _Denoiser:
    """Runs the transformer for the current tokens and hands guided logits to the solver chunk by chunk."""

    def __init__(self, model: URSAModel, cond_ids: torch.Tensor, uncond_ids: Optional[torch.Tensor],
                 plan_: GenerationPlan, runner=None):
        self.model = model
        self.cond_ids = cond_ids.to(model.device)
        self.uncond_ids = None if uncond_ids is None else uncond_ids.to(model.device)
        self.cos, self.sin = rotary_angles(model.config, plan_.latent_shape, model.transformer.dtype, model.device)
        self.keep = predicting_positions(model.config, plan_.active).to(model.device)
        # The branch runner seam: None runs every branch here on the whole sequence; a parallel.ParallelRunner
        # runs this rank's branch on its rows and samples only the tokens they predict.
        self.runner = runner

    def sampled_here(self, use_cfg: bool) -> Optional[torch.Tensor]:
        """Indices into plan.active of the tokens this rank samples in a (un)guided step; None: all of them."""
        return None if self.runner is None else self.runner.split(use_cfg).local

    def gather(self, values: torch.Tensor, use_cfg: bool) -> torch.Tensor:
        """[B, tokens sampled here] -> [B, active tokens] (every rank's part under a parallel runner)."""
        return values if self.runner is None else self.runner.gather(values, use_cfg)

    def _sequence(self, text_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return sequence_ids(self.model.config, text_ids, tokens)

    @torch.no_grad()
    def logits_fn(self, tokens: torch.Tensor, use_cfg: bool, guidance: float) -> Callable[[slice], torch.Tensor]:
        transformer = self.model.transformer
        batch = self.cond_ids.shape[0]
        ids = [self._sequence(self.cond_ids, tokens)]
        if use_cfg:
            ids.append(self._sequence(self.uncond_ids, tokens))
        if self.runner is None:
            hidden = transformer.hidden_states(torch.cat(ids, 0), self.cos, self.sin, self.keep)
            hidden = hidden.reshape(len(ids), batch * self.keep.numel(), -1)
        else:
            hidden = self.runner.hidden_states(transformer, ids, self.cos, self.sin)

        def head(rows: slice) -> torch.Tensor:
            if not use_cfg:
                return transformer.visual_logits(hidden[0, rows])
            return guided_logits(transformer, hidden[0, rows], hidden[1, rows], guidance)
        return partial(head_in_blocks, head, hidden.shape[1])


def guided_logits(transformer, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guided logits z_u + g (z_c - z_u), computed in hidden-state space.

    lm_head is linear without bias, so guiding the hidden states (in fp32) and projecting once equals guiding the
    logits while running the [tokens, K] head for one branch instead of two. This is the only guidance there is.
    """
    cond, uncond_32 = cond.float(), uncond.float()
    return transformer.visual_logits((uncond_32 + guidance * (cond - uncond_32)).to(uncond.dtype))


HEAD_BLOCK = 1024  # rows per lm_head matmul, aligned to the token index


def head_in_blocks(head: Callable[[slice], torch.Tensor], rows: int, sl: slice) -> torch.Tensor:
    """Logits of rows `sl`, always computed in the same HEAD_BLOCK-aligned matmuls whatever the chunk size.

    BLAS kernels are chosen by matrix shape and round differently per shape; fixed blocks keep every row's logits
    bit-identical between chunk sizes, so a chunked run gives the same tokens as a one-chunk run on GPUs too.
    """
    start, stop = sl.start, min(sl.stop, rows)
    parts = []
    for block in range(start - start % HEAD_BLOCK, stop, HEAD_BLOCK):
        logits = head(slice(block, min(block + HEAD_BLOCK, rows)))
        parts.append(logits[max(start - block, 0):stop - block])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def auto_chunk(codebook_size: int, device: torch.device, fused: bool = False) -> int:
    """Tokens per chunk so the live [chunk, K] tensors stay within a small budget: ~6 fp32 ones on the torch
    path, only the (guided) logit chunk on the fused path."""
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
                           cfg_branches=2 if guidance > 1 else 1, include_weights=False,
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
    settings: dict                # every setting as used (defaults filled in from the checkpoint, sampler resolved)


@torch.no_grad()
def generate(model: URSAModel, prompt: str | Sequence[str] = "", negative_prompt: str | Sequence[str] | None = None,
             *, height: int = 320, width: int = 512, frames: int = 1, steps: int = 25, guidance: float = 7.0,
             guidance_trunc: float = 0.9, c: Optional[float] = None, alpha: Optional[float] = None,
             shift: Optional[float] = None, seed: int = 0, schedule: Optional[FrameSchedule] = None,
             given_tokens: Optional[torch.Tensor] = None, motion: Optional[float] = None,
             prompt_ids: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
             callback: Optional[Callable[[StepInfo], None]] = None, chunk_tokens: Optional[int] = None,
             skip_noop_steps: bool = True, sampler: str = "auto", parallel=None) -> Generation:
    """Sample visual tokens [B, T, H/s, W/s] for `prompt` (a string or a list: B prompts) -> `Generation`.

    `c`, `alpha`, `shift` default to the checkpoint's scheduler config. `schedule` gives each latent frame a start
    time (default: all from noise); frames with start > 0 take their tokens from `given_tokens` [B|1, T, h, w].
    `motion` adds the video prefix `motion=<score>, `. `prompt_ids` (cond, uncond) [B, L] bypasses tokenization.
    `callback(StepInfo)` runs after every step; an exception raised there stops generation (cancel).
    The result depends only on the seed (and device numerics), not on `chunk_tokens`. `sampler` picks the jump
    step's implementation: "torch" (chunked tensors), "triton" (fused CUDA kernels) or "auto" (triton on CUDA).
    `parallel` (a parallel.Layout from `parallel.build_layout`, the same call on every rank) shares this one
    generation between ranks (CFG and/or sequence parallel); every rank returns the same tokens.
    """
    scheduler = model.scheduler
    steps, seed, motion = rules.steps(steps), rules.seed(seed), rules.motion(motion)
    settings = dict(height=height, width=width, frames=frames, motion=motion, skip_noop_steps=skip_noop_steps,
                    steps=steps, guidance=rules.cfg(guidance, "guidance"),
                    guidance_trunc=rules.unit("guidance_trunc", guidance_trunc),
                    c=rules.path_param("c", scheduler.c if c is None else c),
                    alpha=rules.path_param("alpha", scheduler.alpha if alpha is None else alpha),
                    shift=rules.path_param("shift", scheduler.shift if shift is None else shift))
    plan_ = plan(model, frames, height, width, steps, settings["shift"], schedule)
    cond_ids, uncond_ids = prompt_ids if prompt_ids is not None else _prompt_ids(model, prompt, negative_prompt,
                                                                                  motion)
    check_memory(model, plan_, cond_ids.shape[0], settings["guidance"])
    fused = use_fused_sampler(sampler, model.device)
    settings.update(sampler="triton" if fused else "torch", schedule_start=plan_.schedule.start,
                    hold=plan_.schedule.hold, prompt=None if prompt_ids is not None else prompt,
                    negative_prompt=None if prompt_ids is not None else negative_prompt,
                    chunk_tokens=int(chunk_tokens or auto_chunk(model.codebook_size, model.device, fused)))
    path = model.path.with_params(c=settings["c"], alpha=settings["alpha"]).to(model.device)
    start = initial_tokens(model, path, plan_, cond_ids.shape[0], seed, given_tokens)
    runner = None
    if parallel is not None and parallel.world > 1:
        from ..parallel.distributed import ParallelRunner
        runner = ParallelRunner(parallel, model.config, plan_.active, plan_.latent_shape, model.device)
        settings.update(parallel=dict(cfg=parallel.cfg, sp=parallel.sp))
    denoiser = _Denoiser(model, cond_ids, uncond_ids if settings["guidance"] > 1 else None, plan_, runner)
    tokens = _sample(model, path, plan_, denoiser, start, seed, settings, callback)
    return Generation(tokens, start, int(seed), settings)


def _sample(model, path, plan_: GenerationPlan, denoiser: "_Denoiser", tokens: torch.Tensor, seed: int,
            settings: dict, callback) -> torch.Tensor:
    """The step loop: every step's clocks, transformer pass (guided or not) and jump; the callback after each."""
    batch, steps, guidance = tokens.shape[0], settings["steps"], settings["guidance"]
    flat_active = tokens.flatten(1)[:, plan_.active]
    for step in range(steps):
        final = step == steps - 1
        clocks = FrameClocks.at_step(plan_.schedule, plan_.grid, step, settings["c"], settings["alpha"],
                                     plan_.token_frame, batch, model.device)
        t = float(plan_.grid[step])
        predicted = None
        # Decided on every token's clock, so all ranks of a parallel run skip the same steps.
        if final or not (settings["skip_noop_steps"] and bool((clocks.beta_dot == 0).all())):
            use_cfg = guidance > 1 and t < settings["guidance_trunc"]
            u = uniforms(seed, TAG_STEP, step, (3, batch, tokens[0].numel()))[:, :, plan_.active]
            x_t, local = flat_active, denoiser.sampled_here(use_cfg)
            if local is not None:  # this rank samples only its shard's tokens
                u, x_t = u[:, :, local], x_t[:, local]
                clocks = FrameClocks.at_step(plan_.schedule, plan_.grid, step, settings["c"], settings["alpha"],
                                             plan_.token_frame[local], batch, model.device)
            new, x1 = euler_step(path, denoiser.logits_fn(tokens, use_cfg, guidance),
                                 x_t.reshape(-1).to(model.device), clocks, u.reshape(3, -1).to(model.device),
                                 final, settings["chunk_tokens"], fused=settings["sampler"] == "triton")
            flat_active = denoiser.gather(new.view(batch, -1), use_cfg).cpu()
            tokens = _scatter(tokens, plan_.active, flat_active)
            predicted = _scatter(tokens, plan_.active, denoiser.gather(x1.view(batch, -1), use_cfg).cpu())
        if callback is not None:
            callback(StepInfo(step, steps, t, tokens, predicted))
    return tokens


def _scatter(tokens: torch.Tensor, active: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = tokens.clone()
    out.flatten(1)[:, active] = values
    return out
