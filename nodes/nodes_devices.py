"""URSADevices: the model on several devices of this machine (a weight copy and the loader's speed options on each)."""
from __future__ import annotations

from comfy_api.latest import io

from ursa_core import rules

from . import glue
from .types import URSAModel


class URSADevices(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSADevices", display_name="URSA Devices (multi-GPU)", category="URSA/loaders",
            description="Runs the model on several GPUs of this machine, each holding its own copy of the weights "
                        "(3.4 GB in bf16 for URSA-1.7B) with the loader's speed options. One sample: its two "
                        "guidance branches run at once on two GPUs. A batch: each sample on its own GPU. Same "
                        "tokens as one GPU. ComfyUI loads and frees every copy like any other model.",
            inputs=[
                URSAModel.Input("model", tooltip="From URSA Model Loader."),
                io.String.Input("devices", default="cuda:0, cuda:1",
                                tooltip="Devices separated by commas, e.g. 'cuda:0, cuda:1' (cpu and mps too). "
                                        "The first one combines the guidance branches and decodes nothing else; "
                                        "each listed device gets a weight copy. A device may repeat (two copies "
                                        "on one GPU: only useful to compare speed)."),
                io.Combo.Input("strategy", options=list(rules.DEVICE_STRATEGIES), default="auto",
                               tooltip="auto: a single sample splits its two guidance branches over two GPUs; a "
                                       "batch puts one sample on each GPU (the last samples, if they would "
                                       "leave half the GPUs idle, split their branches again). branches: "
                                       "always split branches (one sample per pair of GPUs). samples: always "
                                       "one sample per GPU."),
            ],
            outputs=[URSAModel.Output(display_name="model",
                                      tooltip="The model on the listed devices: connect to URSA Sampler or URSA "
                                              "Extend Video.")],
        )

    @classmethod
    def validate_inputs(cls, devices=None):
        # (strategy is left to core's COMBO check)
        return True if devices is None else rules.first_problem(lambda: rules.device_list(devices))

    @classmethod
    def execute(cls, model, devices, strategy="auto") -> io.NodeOutput:
        return io.NodeOutput(glue.on_devices(model, rules.device_list(devices), strategy))
