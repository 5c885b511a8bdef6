"""Full-size URSA models with random weights built directly on the GPU (no download), for benchmarks."""
from __future__ import annotations

from pathlib import Path

import torch

from ursa_core.checkpoint.loader import URSAModel
from ursa_core.model.config import SchedulerConfig, TransformerConfig
from ursa_core.model.modeling_ursa import URSATransformer, build_transformer
from ursa_core.path.metric_path import MetricPath
from ursa_core.visual_tokenizer.fsq import code_table
from ursa_core.visual_tokenizer.geometry import VisualGeometry

FSQ320 = TransformerConfig()  # the 1.7B FSQ320 dimensions are the defaults
IBQ_CODES, IBQ_DIM = 131_072, 256  # IBQ1024: K from Emu3.5's tokenizer; the embed dim is an assumption
IBQ1024 = TransformerConfig(vocab_size=151_669 + IBQ_CODES, lm_head_size=IBQ_CODES)
TINY = TransformerConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                         num_hidden_layers=2, vocab_size=1000 + 64_000, lm_vocab_size=1000, bov_token_id=999,
                         max_prompt_length=24)


@torch.no_grad()
def random_transformer(config: TransformerConfig, device, dtype, seed: int = 0) -> URSATransformer:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = URSATransformer(config)
    model = model.to_empty(device=device)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02)
    return model.to(dtype).eval().requires_grad_(False)


def with_fused_projections(transformer: URSATransformer) -> URSATransformer:
    """The same weights loaded into fused q/k/v and gate/up projections (the loader's fuse_projections)."""
    fused = build_transformer(transformer.config, transformer.state_dict(), transformer.dtype, fuse_projections=True)
    fused.set_attention(transformer.attn_implementation)
    return fused


def random_model(kind: str, device, dtype=torch.bfloat16) -> URSAModel:
    """kind: 'fsq' (1.7B, K=64000, 6-D FSQ codes), 'ibq' (1.7B, K=131072) or 'tiny' (CPU smoke test)."""
    config = {"fsq": FSQ320, "ibq": IBQ1024, "tiny": TINY}[kind]
    transformer = random_transformer(config, device, dtype)
    if kind == "ibq":
        emb = torch.randn(IBQ_CODES, IBQ_DIM, generator=torch.Generator().manual_seed(1))
        geometry = VisualGeometry(temporal_stride=1, spatial_stride=16, image_only=True)
    else:
        emb, geometry = code_table(), VisualGeometry()
    path = MetricPath(emb, c=3.0, alpha=0.9).to(device)
    return URSAModel(Path(f"random-{kind}"), config, SchedulerConfig(shift=1.0), transformer, path, None, geometry)


def random_prompt_ids(config: TransformerConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randint(0, config.lm_vocab_size - 200, (1, config.max_prompt_length), generator=gen)
    uncond = torch.full_like(cond, 151_643 if config.lm_vocab_size > 151_643 else 0)  # "" = all pad tokens
    return cond, uncond
