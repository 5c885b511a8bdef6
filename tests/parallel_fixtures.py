"""The model and settings shared by tests/test_parallel.py and the ranks it spawns (tests/parallel_worker.py)."""
import dataclasses

from ursa_core.checkpoint.loader import load_model
from ursa_core.checkpoint.tiny import random_transformer_state
from ursa_core.model.modeling_ursa import build_transformer

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
