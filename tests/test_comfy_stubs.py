"""The ComfyUI fakes behave like ComfyUI 0.8.0 where our nodes depend on it."""
import os
import sys

import pytest
import torch

from conftest import STUB_MODULE_NAMES


def _demo_node(io, ui):
    Tokens = io.Custom("URSA_TOKENS")

    class Demo(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="URSADemo", display_name="URSA Demo", category="URSA/test",
                inputs=[io.Int.Input("steps", default=25, min=1, max=200, step=1, tooltip="steps"),
                        io.Float.Input("cfg", default=7.0, min=0.0, max=30.0, step=0.1, round=0.01),
                        io.Combo.Input("mode", options=["t2v", "i2v"], default="t2v"),
                        io.Int.Input("frames", default=9, min=1, max=64),
                        io.Image.Input("image", optional=True)],
                outputs=[Tokens.Output(display_name="tokens"), io.Image.Output()],
                hidden=[io.Hidden.unique_id], is_output_node=True)

        @classmethod
        def validate_inputs(cls, frames):
            return True if (frames - 1) % 4 == 0 else "frames must be 4k+1"

        @classmethod
        def execute(cls, steps, cfg, mode, frames, image=None):
            img = torch.zeros(1, 8, 8, 3)
            return io.NodeOutput({"uid": cls.hidden.unique_id}, img, ui=ui.PreviewImage(img, cls=cls))

    return Demo, Tokens


def test_modules_installed_and_removed(comfy):
    import comfy.model_management as mm
    import folder_paths
    from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401

    assert set(STUB_MODULE_NAMES) <= set(sys.modules)
    assert mm.get_torch_device() == torch.device("cpu") == mm.intermediate_device() == mm.unet_offload_device()
    assert folder_paths.get_output_directory() == comfy.output_dir
    assert folder_paths.get_input_directory() == comfy.input_dir


def test_stubs_gone_after_test():
    assert "folder_paths" not in sys.modules and "comfy_api.latest" not in sys.modules


def test_schema_keeps_input_metadata(comfy):
    Demo, Tokens = _demo_node(comfy.io, comfy.ui)
    schema = Demo.GET_SCHEMA()
    steps = schema.input_by_id("steps")
    assert (steps.default, steps.min, steps.max, steps.step, steps.tooltip) == (25, 1, 200, 1, "steps")
    assert schema.input_by_id("mode").options == ["t2v", "i2v"]
    for i in schema.inputs:
        if getattr(i, "min", None) is not None and i.default is not None:
            assert i.min <= i.default <= i.max
    types_ = Demo.INPUT_TYPES()
    assert types_["required"]["steps"] == ("INT", {"default": 25, "min": 1, "max": 200, "step": 1, "tooltip": "steps"})
    assert types_["optional"]["image"] == ("IMAGE", {})
    # output nodes get PROMPT/EXTRA_PNGINFO like core's Schema.finalize
    assert set(types_["hidden"]) == {"unique_id", "prompt", "extra_pnginfo"}
    assert Demo.RETURN_TYPES == ("URSA_TOKENS", "IMAGE") and Tokens.io_type == "URSA_TOKENS"
    assert Demo.RETURN_NAMES == ("tokens", "IMAGE")


def test_duplicate_ids_rejected(comfy):
    io = comfy.io

    class Bad(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="Bad", inputs=[io.Int.Input("a"), io.Float.Input("a")])

        @classmethod
        def execute(cls, a):
            return io.NodeOutput()

    with pytest.raises(ValueError, match="unique"):
        Bad.GET_SCHEMA()


def test_validation_trap_is_reproduced(comfy):
    Demo, _ = _demo_node(comfy.io, comfy.ui)
    ok = {"steps": 25, "cfg": 7.0, "mode": "t2v", "frames": 9}
    assert comfy.validate(Demo, ok) == []
    assert [e["type"] for e in comfy.validate(Demo, {**ok, "steps": 0})] == ["value_smaller_than_min"]
    assert [e["type"] for e in comfy.validate(Demo, {**ok, "mode": "x"})] == ["value_not_in_list"]
    errs = comfy.validate(Demo, {**ok, "frames": 10})
    assert errs == [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                     "details": "frames - frames must be 4k+1", "extra_info": {"input_name": "frames"}}]
    # frames is named by validate_inputs -> core skips its max check (the trap in spec §1.7)
    assert comfy.validate(Demo, {**ok, "frames": 1001}) == []
    # absent inputs are not passed to the validator: a parameter without default -> TypeError in core too
    assert [e["type"] for e in comfy.validate(Demo, {"steps": 1})] == ["exception_during_validation"]
    assert [e["type"] for e in comfy.validate(Demo, {"steps": 1, "frames": 5})] == ["required_input_missing"] * 2


def test_run_node_sets_hidden_and_saves_preview(comfy):
    Demo, _ = _demo_node(comfy.io, comfy.ui)
    out = comfy.run(Demo, hidden={"UNIQUE_ID": "7"}, steps=2, cfg=1.0, mode="t2v", frames=9)
    assert out.result[0] == {"uid": "7"} and out[1].shape == (1, 8, 8, 3)
    d = out.ui.as_dict()
    assert d["animated"] == (False,) and d["images"][0]["type"] == "temp"
    assert os.path.isfile(os.path.join(comfy.temp_dir, d["images"][0]["filename"]))
    assert Demo.hidden is None  # the class itself is never mutated


def test_progress_bar_records_and_interrupts(comfy):
    import comfy.model_management as mm
    from comfy.utils import ProgressBar

    comfy.interrupt_after(3)
    pbar = ProgressBar(10)
    for _ in range(3):
        pbar.update(1)
    assert [u["value"] for u in comfy.progress_updates] == [1, 2, 3]
    assert all(u["total"] == 10 for u in comfy.progress_updates)
    with pytest.raises(mm.InterruptProcessingException):
        pbar.update(1)
    assert len(comfy.progress_updates) == 3
    assert mm.processing_interrupted() is False  # the raise clears the flag, as in core
    pbar.update_absolute(99)  # clamps to total
    assert comfy.progress_updates[-1]["value"] == 10


def test_request_interrupt_and_explicit_check(comfy):
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
    comfy.request_interrupt()
    assert mm.processing_interrupted()
    with pytest.raises(comfy.InterruptProcessingException):
        mm.throw_exception_if_processing_interrupted()


def test_model_patcher_and_load_models_gpu(comfy):
    import comfy.model_management as mm
    from comfy.model_patcher import ModelPatcher

    net = torch.nn.Linear(4, 4)
    p = ModelPatcher(net, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    assert net.device == torch.device("cpu")  # set from offload_device, like core
    assert p.model_size() == sum(t.nbytes for t in net.state_dict().values())
    mm.load_models_gpu([p])
    assert comfy.loaded_models == [p] and comfy.patchers == [p]
    with pytest.raises(AttributeError, match="ModelPatcher"):
        mm.load_models_gpu([net])  # a bare nn.Module fails in core too


def test_folder_paths(comfy, tmp_path):
    import folder_paths

    ursa_dir = tmp_path / "ursa_models"
    (ursa_dir / "ursa-1.7b").mkdir(parents=True)
    (ursa_dir / "ursa-1.7b" / "model_index.json").write_text("{}")
    folder_paths.add_model_folder_path("ursa", str(ursa_dir))
    assert folder_paths.get_folder_paths("ursa") == [str(ursa_dir)]
    assert folder_paths.get_filename_list("ursa") == [os.path.join("ursa-1.7b", "model_index.json")]
    with pytest.raises(KeyError):
        folder_paths.get_folder_paths("nope")
    folder, name, counter, sub, _ = folder_paths.get_save_image_path("ursa/clip", comfy.output_dir, 64, 32)
    assert (folder, name, counter, sub) == (os.path.join(comfy.output_dir, "ursa"), "clip", 1, "ursa")
    open(os.path.join(folder, "clip_00001_.png"), "w").close()
    assert folder_paths.get_save_image_path("ursa/clip", comfy.output_dir)[2] == 2
    with pytest.raises(Exception, match="outside the output folder"):
        folder_paths.get_save_image_path("../evil", comfy.output_dir)


def test_extension_pattern(comfy):
    import asyncio
    from comfy_api.latest import ComfyExtension

    Demo, _ = _demo_node(comfy.io, comfy.ui)

    class Ext(ComfyExtension):
        async def get_node_list(self):
            return [Demo]

    async def comfy_entrypoint():
        return Ext()

    ext = asyncio.run(comfy_entrypoint())
    assert [n.GET_SCHEMA().node_id for n in asyncio.run(ext.get_node_list())] == ["URSADemo"]
