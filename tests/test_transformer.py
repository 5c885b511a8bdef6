"""The transformer forward against an independent float64 implementation on random weights."""
import pytest
import torch

from ursa_core.checkpoint.tiny import random_transformer_state
from ursa_core.model.config import TransformerConfig
from ursa_core.model.modeling_ursa import URSATransformer, build_transformer
from ursa_core.model.rope import rotary_cos_sin, sequence_positions

CFG = TransformerConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2,
                        num_hidden_layers=2, vocab_size=60 + 37, lm_vocab_size=60, lm_head_size=37,
                        bov_token_id=5, max_prompt_length=6)


def axis_of_pair(i):
    return i % 3 if i < 48 else 1 + (i - 48) % 2


def complex_rope(x, pos):
    """x [S, H, 128]; rotation as complex multiplication of (x_i + j x_{i+64}) by exp(j theta)."""
    z = torch.complex(x[..., :64], x[..., 64:])
    inv = 1e6 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    axes = torch.tensor([axis_of_pair(i) for i in range(64)])
    theta = pos[:, axes].double() * inv  # [S, 64]
    z = z * torch.polar(torch.ones_like(theta), theta)[:, None, :]
    return torch.cat([z.real, z.imag], -1)


def rms(x, w, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def reference_forward(state, ids, pos, cfg):
    s = {k: v.double() for k, v in state.items()}
    x = s["model.embed_tokens.weight"][ids]  # [S, hidden], single sequence
    seq = ids.shape[0]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms(x, s[p + "input_layernorm.weight"])
        q = (h @ s[p + "self_attn.q_proj.weight"].T).view(seq, cfg.num_attention_heads, 128)
        k = (h @ s[p + "self_attn.k_proj.weight"].T).view(seq, cfg.num_key_value_heads, 128)
        v = (h @ s[p + "self_attn.v_proj.weight"].T).view(seq, cfg.num_key_value_heads, 128)
        q = complex_rope(rms(q, s[p + "self_attn.q_norm.weight"]), pos)
        k = complex_rope(rms(k, s[p + "self_attn.k_norm.weight"]), pos)
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        out = torch.zeros(seq, cfg.num_attention_heads, 128, dtype=torch.float64)
        for head in range(cfg.num_attention_heads):
            kv = head // group  # GQA: consecutive query heads share a kv head
            scores = q[:, head] @ k[:, kv].T / 128 ** 0.5  # no mask: fully bidirectional
            out[:, head] = torch.softmax(scores, -1) @ v[:, kv]
        x = x + out.reshape(seq, -1) @ s[p + "self_attn.o_proj.weight"].T
        h = rms(x, s[p + "post_attention_layernorm.weight"])
        gate, up = h @ s[p + "mlp.gate_proj.weight"].T, h @ s[p + "mlp.up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ s[p + "mlp.down_proj.weight"].T
    return rms(x, s["model.norm.weight"]) @ s["lm_head.weight"].T


def build(dtype):
    state = random_transformer_state(CFG, seed=4)
    model = URSATransformer(CFG)
    model.load_state_dict(state)
    return state, model.to(dtype).eval()


def inputs():
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, 60, (CFG.max_prompt_length,), generator=gen)
    visual = torch.randint(0, 37, (2 * 2 * 3,), generator=gen) + CFG.lm_vocab_size
    ids = torch.cat([text, torch.tensor([CFG.bov_token_id]), visual])
    pos = sequence_positions(CFG.max_prompt_length, (2, 2, 3))
    return ids, pos


def test_forward_matches_float64_reference():
    state, model = build(torch.float64)
    ids, pos = inputs()
    cos, sin = rotary_cos_sin(pos, 128, CFG.rope_theta, torch.float64)
    ours = model(ids[None], cos, sin)[0]
    ref = reference_forward(state, ids, pos, CFG)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()  # fp32 rotary angles


def test_keep_selects_positions_exactly():
    _, model = build(torch.float64)
    ids, pos = inputs()
    cos, sin = rotary_cos_sin(pos, 128, CFG.rope_theta, torch.float64)
    keep = torch.tensor([CFG.max_prompt_length, CFG.max_prompt_length + 3, ids.shape[0] - 2])
    assert torch.allclose(model(ids[None], cos, sin, keep), model(ids[None], cos, sin)[:, keep])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.float16, 0.1), (torch.bfloat16, 0.3)])
def test_low_precision_close_to_float64(dtype, tol):
    state, model = build(dtype)
    ids, pos = inputs()
    cos, sin = rotary_cos_sin(pos, 128, CFG.rope_theta, dtype)
    out = model(ids[None], cos, sin)[0]
    assert out.dtype == dtype
    ref = reference_forward(state, ids, pos, CFG)
    assert (out.double() - ref).abs().max() < tol * ref.abs().max()


def test_layer_streaming_matches_resident_forward():
    """Low-VRAM streaming (CPU fallback path: synchronous copies) gives the same hidden states."""
    import copy

    from ursa_core.runtime.lowvram import enable_low_vram

    _, model = build(torch.float32)
    streamed = copy.deepcopy(model)
    streamer = enable_low_vram(streamed, "cpu")
    ids, pos = inputs()
    cos, sin = rotary_cos_sin(pos, 128, CFG.rope_theta, torch.float32)
    assert torch.equal(streamed(ids[None], cos, sin), model(ids[None], cos, sin))
    assert streamer.resident_bytes() == 2 * sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    assert len(streamed.model.layers) == 0  # streamed layers left the module tree: only host copies remain
    assert streamer.host_bytes() == sum(p.numel() * 4 for p in model.model.layers.parameters())


def test_fused_projections_are_a_load_option_with_the_same_output():
    state, model = build(torch.float64)
    ids, pos = inputs()
    cos, sin = rotary_cos_sin(pos, 128, CFG.rope_theta, torch.float64)
    fused = build_transformer(CFG, state, torch.float64, fuse_projections=True)
    attn = fused.model.layers[0].self_attn
    assert hasattr(attn, "qkv_proj") and not hasattr(attn, "q_proj") and hasattr(fused.model.layers[0].mlp,
                                                                                  "gate_up_proj")
    assert torch.allclose(fused(ids[None], cos, sin), model(ids[None], cos, sin), atol=1e-10)


def test_output_hidden_states_follow_transformers_convention():
    state, model = build(torch.float64)
    ids, pos = inputs()
    cos, sin = rotary_cos_sin(pos, 128, CFG.rope_theta, torch.float64)
    keep = torch.tensor([CFG.max_prompt_length, ids.shape[0] - 1])
    out = model(ids[None], cos, sin, keep, output_hidden_states=True)
    assert len(out.hidden_states) == CFG.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[0][0], state["model.embed_tokens.weight"].double()[ids])
    assert torch.allclose(out.logits, model(ids[None], cos, sin, keep))
    # the last state is final-normed: the head applied to it gives the logits at every position
    assert torch.allclose(model.visual_logits(out.hidden_states[-1]), model(ids[None], cos, sin), atol=1e-10)
    # an intermediate state is the input of the next layer
    second = model.model.layers[1](out.hidden_states[1], cos, sin)
    assert torch.allclose(model.model.norm(second), out.hidden_states[2], atol=1e-10)


def test_attention_backend_is_looked_up_by_name(monkeypatch):
    from ursa_core.attention import backends as attention
    _, model = build(torch.float64)
    ids, pos = inputs()
    cos, sin = rotary_cos_sin(pos, 128, CFG.rope_theta, torch.float64)
    ref = model(ids[None], cos, sin)
    calls = []

    def counting(q, k, v):
        calls.append(q.shape)
        return attention.sdpa(q, k, v)
    monkeypatch.setitem(attention._REGISTRY, "counting", attention.AttentionBackend(
        "counting", lambda: counting, lambda device: True, "test backend"))
    model.set_attention("counting")
    try:
        assert torch.equal(model(ids[None], cos, sin), ref) and len(calls) == CFG.num_hidden_layers
    finally:
        attention._BUILT.pop("counting", None)
    model.set_attention("math")
    assert model.attn_implementation == "math"
    assert torch.allclose(model(ids[None], cos, sin), ref, atol=1e-10)
