"""The model and settings shared by tests/test_parallel.py and the ranks it spawns (tests/parallel_worker.py)."""
import dataclasses

import torch

from ursa_core.checkpoint.loader import load_model
from ursa_core.checkpoint.tiny import random_transformer_state
from ursa_core.model.modeling_ursa import build_transformer
from ursa_core.path.masks import mask_start_times

# A 5-frame clip (2 latent frames of 4x4 tokens, 57 rows with the prompt) with guidance and one unguided step.
KV_HEADS = 4   # 8 query heads in groups of 2: 2 or 4 ranks get whole KV groups
SAMPLING = dict(frames=5, height=32, width=32, steps=5, guidance=5.0, guidance_trunc=0.7, seed=3, motion=9.0)


def two_kv_head_model(tiny_dir):
    """The tiny checkpoint with a random 8-query / 4-KV-head transformer in fp32 (the tiny one has 1 KV head)."""
    model = load_model(tiny_dir, device="cpu", dtype="fp32")
    config = dataclasses.replace(model.config, num_attention_heads=8, num_key_value_heads=KV_HEADS,
                                 head_dim=8)
    transformer = build_transformer(config, random_transformer_state(config, seed=11), model.transformer.dtype)
    return dataclasses.replace(model, config=config, transformer=transformer)


def masked_inputs(codebook_size: int):
    """A repaint of SAMPLING's clip: source tokens and the start times of a pixel mask that regenerates a 2 x 2 token
    block of latent frame 1 (pixel frames 1..4) and re-noises two tokens of frame 0 half way; the rest is held. On
    two sequence ranks the prompt rows put frame 0's first tokens on rank 0 and the block on rank 1."""
    given = torch.randint(0, codebook_size, (1, 2, 4, 4), generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(5, 32, 32)
    mask[1:5, 8:24, 8:24] = 1.0
    mask[0, 0:8, 0:16] = 0.5
    return mask_start_times(mask, (2, 4, 4), temporal_stride=4, spatial_stride=8), given
