"""URSALoraLoader: URSA_MODEL + a LoRA from models/loras/ -> URSA_MODEL (chainable, as core's LoraLoaderModelOnly)."""
from __future__ import annotations

import os

from comfy_api.latest import io

from ursa_core.lora.files import CONFIG_NAME, read_lora
from ursa_core.lora.patch import STRENGTH_RANGE, strength as strength_rule

from . import glue
from .types import URSAModel
from .widgets import float_input

LORA_FOLDER = "loras"


def lora_choices() -> list[str]:
    return glue.list_tensor_files(LORA_FOLDER)


class URSALoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSALoraLoader", display_name="URSA LoRA Loader", category="URSA/loaders",
            description="Adds a LoRA to an URSA model: a PEFT adapter (upstream's trainer: adapter_config.json + "
                        "adapter_model.safetensors or .bin, in a folder under models/loras/) or a single LoRA file "
                        "(lora_down/lora_up + alpha). Chain several; the base weights are never changed or reloaded.",
            inputs=[
                URSAModel.Input("model", tooltip="From URSA Model Loader (or another URSA LoRA Loader)."),
                io.Combo.Input("lora_name", options=lora_choices(),
                               tooltip="A file of models/loras/. For a PEFT adapter folder pick its "
                                       "adapter_model.safetensors (or .bin); its adapter_config.json is read beside "
                                       "it."),
                float_input("strength", 1.0, *STRENGTH_RANGE, step=0.01,
                            tooltip="How much of the LoRA's change is added: 1 = as trained, 0 = none, negative = "
                                    "the opposite."),
            ],
            outputs=[URSAModel.Output(display_name="model", tooltip="The model with this LoRA (and any before it).")],
        )

    # No validate_inputs: the file list and the strength's range (NaN included) are core's own checks (widgets.py).

    @classmethod
    def fingerprint_inputs(cls, lora_name=None, **others):
        path = glue.tensor_file_path(LORA_FOLDER, lora_name, "lora_name")
        config = path.parent / CONFIG_NAME
        return max(os.path.getmtime(p) for p in (path, config) if p.is_file())

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        value = strength_rule(strength)
        if value == 0:   # as core: nothing to add
            return io.NodeOutput(model)
        lora = read_lora(glue.tensor_file_path(LORA_FOLDER, lora_name, "lora_name"))
        return io.NodeOutput(glue.with_lora(model, lora, value))
