"""Sampling steps as CUDA graphs (ursa_core/runtime/graphs.py), the parts that run without a GPU: where capture is
allowed, that it is guarded off on the CPU, and the loop's contract with a step runner (device inputs only, one key per
kind of step). The captured replays themselves are checked bit-identical in tests/test_cuda.py."""
import torch

from ursa_core.attention.backends import is_capturable
from ursa_core.runtime import graphs
from ursa_core.runtime.lowvram import place_embeddings
from ursa_core.runtime.speed import Placement, SpeedOptions, with_speed
from ursa_core.sampling import generate as generation
from ursa_core.sampling.generate import generate
from ursa_core.sampling.runners import SingleDevice
from ursa_core.sampling.settings import GenerationSettings

RUN = dict(frames=5, height=32, width=32, steps=6, seed=4, guidance=5.0, guidance_trunc=0.5)


def test_capture_is_allowed_only_for_a_whole_step_on_one_gpu(tiny_model):
    cuda = torch.device("cuda")
    planned = generation.plan(tiny_model, GenerationSettings(frames=5, height=32, width=32, steps=2), None)
    runner = SingleDevice().runner(tiny_model, planned)
    assert graphs.unsupported(tiny_model.transformer, runner, cuda) is None  # the target device is named, not read
    assert "not a CUDA GPU" in graphs.unsupported(tiny_model.transformer, runner, torch.device("cpu"))
    assert "collectives" in graphs.unsupported(tiny_model.transformer, object(), cuda)
    streamed = with_speed(tiny_model, SpeedOptions(low_vram="stream"), Placement.single("cpu")).transformer
    assert "block swap" in graphs.unsupported(streamed, runner, cuda)
    text_elsewhere = tiny_model.transformer.clone()
    place_embeddings(text_elsewhere, "meta")  # the table away from the layers, as text_device=cpu puts it
    assert "embedding table" in graphs.unsupported(text_elsewhere, runner, cuda)
    sage = tiny_model.transformer.clone()
    sage._attention = "sage2"   # as set_attention("sage2") names it (building the kernel needs its GPU extension)
    assert "sage2 attention kernel is not captured" in graphs.unsupported(sage, runner, cuda)
    assert all(is_capturable(name) for name in ("sdpa", "cudnn", "flash4")) and not is_capturable("sage")


def test_graph_steps_on_the_cpu_run_eagerly_with_the_same_tokens(tiny_model):
    handle = with_speed(tiny_model, SpeedOptions(cuda_graphs=True), Placement.single("cpu"))
    assert handle.transformer.graph_steps and not tiny_model.transformer.graph_steps
    assert generation._step_runner(handle, object()) is graphs.eager
    assert torch.equal(generate(handle, "a fox", **RUN).tokens, generate(tiny_model, "a fox", **RUN).tokens)


def test_each_step_hands_the_runner_device_tensors_and_its_kind(tiny_model, mocker):
    """What a CUDA graph needs from the loop: every input a tensor already on the model's device (the host copies
    happen before the step), and a key naming the kind of step (branches, final) so equal kinds share a graph."""
    seen = []

    def recording(key, step, inputs):
        assert all(isinstance(t, torch.Tensor) and t.device == tiny_model.device for t in inputs)
        seen.append((key, [tuple(t.shape) for t in inputs]))
        return step(*inputs)
    mocker.patch.object(generation, "_step_runner", return_value=recording)
    tokens = generate(tiny_model, "a fox", **RUN).tokens
    # step 0 is the no-op first step; t = i/6 < 0.5 runs two branches; the last step is final
    assert [key for key, _ in seen] == [(2, False), (2, False), (1, False), (1, False), (1, True)]
    active = tokens[0].numel()
    assert seen[0][1] == [(1, active), (active,), (active,), (active,), (active,), (3, active)]
    mocker.stopall()
    assert torch.equal(generate(tiny_model, "a fox", **RUN).tokens, tokens)
