"""A straightforward baseline that does what the reference pipeline does, for side-by-side timing:

logits for the whole sequence, fp16 [tokens, K] distance/probability/rate tensors materialised, both CFG branches
at every step, the no-op first step's forward, torch.multinomial draws, an unchunked MLP.
"""
from __future__ import annotations

import torch

from ursa_core.model.modeling_ursa import MLP
from ursa_core.model.sequence import sequence_ids
from ursa_core.path.metric_path import beta, beta_dot
from ursa_core.sampling.generate import plan
from ursa_core.sampling.settings import GenerationSettings


@torch.no_grad()
def reference_step(model, x, text, cos, sin, t, h, last, guidance, trunc, emb16, sumsq16):
    config, n = model.config, x.numel()
    ids = torch.cat([sequence_ids(config, ids, x.view(1, -1)) for ids in text], 0)
    hidden = model.transformer.hidden_states(ids, cos, sin)
    logits = model.transformer.visual_logits(hidden)[:, -(n + 1):-1]  # every position's logits, then the slice
    z = logits[1] + guidance * (logits[0] - logits[1]) if t < trunc else logits[0]
    x1 = torch.multinomial(torch.softmax(z.float(), -1).half(), 1).squeeze(1)
    if last:
        return x1
    dist = (sumsq16[x1, None] + sumsq16[None] - 2 * emb16[x1] @ emb16.T)  # [n, K] fp16, as the reference
    b, bd = (float(f(torch.tensor(t, dtype=torch.float64), model.path.c, model.path.alpha)) for f in (beta, beta_dot))
    p_t = torch.softmax(-b * dist.float(), -1).half()
    d_cur = dist.gather(1, x.view(-1, 1))
    rate = p_t * bd * (d_cur - dist).clamp_min(0)
    rate.scatter_(1, x.view(-1, 1), 0)
    total = rate.float().sum(-1)
    jump = torch.rand(n, device=x.device) < 1 - torch.exp(-h * total)
    dest = torch.multinomial(rate.float().clamp_min(0) + 1e-20, 1).squeeze(1)
    return torch.where(jump, dest, x.view(-1)).view_as(x)


@torch.no_grad()
def reference_generate(model, prompt_ids, frames, height, width, steps, guidance=7.0, trunc=0.9, seed=0,
                       step_callback=None):
    """Tokens [1, T, h, w]; `step_callback(i)` after every step (for timing)."""
    saved = MLP.chunk_tokens
    MLP.chunk_tokens = 1 << 30  # the reference's MLP runs the whole sequence at once
    try:
        p = plan(model, GenerationSettings(frames=frames, height=height, width=width, steps=steps), None)
        device = model.device
        cos, sin = model.transformer.rotary_tables(p.latent_shape)
        emb16 = model.path.unit.half()
        sumsq16 = model.path.sumsq.half()
        torch.manual_seed(seed)
        x = torch.randint(0, model.codebook_size, p.latent_shape, device=device)
        text = [ids.to(device) for ids in prompt_ids]
        for i in range(steps):
            t = float(p.grid[i])
            h = float(p.grid[i + 1] - p.grid[i]) if i + 1 < steps else 0.0
            x = reference_step(model, x, text, cos, sin, t, h, i == steps - 1, guidance, trunc, emb16, sumsq16)
            if step_callback:
                step_callback(i)
        return x.view(1, *p.latent_shape).cpu()
    finally:
        MLP.chunk_tokens = saved
