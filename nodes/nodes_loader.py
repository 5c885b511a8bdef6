"""URSAModelLoader: a checkpoint folder from models/ursa/ -> URSA_MODEL + URSA_VQ."""
from __future__ import annotations

import os

from comfy_api.latest import io

from ursa_core import rules
from ursa_core.acceleration import accelerate
from ursa_core import attention as attention_backends

from . import glue
from .types import URSAModel, URSAVQ

DTYPES = list(rules.DTYPES)


class URSAModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="URSAModelLoader", display_name="URSA Model Loader", category="URSA/loaders",
            description="Loads an URSA checkpoint folder (official layout: model_index.json, transformer/, vae/, "
                        "scheduler/, tokenizer/) from models/ursa/. Weights stay on the offload device until a "
                        "sampler or tokenizer node needs them; ComfyUI's model management moves them.",
            inputs=[
                io.Combo.Input("model_name", options=glue.list_model_folders(),
                               tooltip="Checkpoint folder under models/ursa/ (any folder with model_index.json), "
                                       "e.g. URSA-1.7B-FSQ320 for video or URSA-1.7B-IBQ1024 for 1024px images."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Transformer weight/compute dtype. auto = bf16 on GPUs that support it, "
                                       "else fp16; fp32 on CPU."),
                io.Combo.Input("attention", options=list(attention_backends.names()), default="auto",
                               optional=True,
                               tooltip="Attention kernel. auto = the fastest available (today sdpa: PyTorch SDPA's "
                                       "choice, cuDNN on H100); flash/cudnn/efficient/math pin one SDPA kernel; flex = "
                                       "FlexAttention (compiled)."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the layers (about 23% faster per step on an H100; the first "
                                         "run of each size compiles for ~15 s; needs Triton)."),
            ],
            outputs=[URSAModel.Output(display_name="model"), URSAVQ.Output(display_name="vq")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, attention=None):
        # Naming these inputs turns off core's COMBO checks, so this checks membership itself.
        if attention is not None:
            checked = rules.first_problem(lambda: rules.attention(attention, glue.compute_device()))
            if checked is not True:
                return checked
        if model_name is None:
            return True
        available = glue.list_model_folders()
        if model_name not in available:
            return (f"model folder {model_name!r} not found in {glue.model_search_dirs()}; "
                    f"available: {available or 'none - download one into models/ursa/'}")
        return True

    @classmethod
    def fingerprint_inputs(cls, model_name=None, dtype=None, attention=None, compile=None):
        folder = glue.model_folder_path(model_name)
        return max(os.path.getmtime(p) for p in folder.rglob("*") if p.is_file())

    @classmethod
    def execute(cls, model_name, dtype, attention="auto", compile=False) -> io.NodeOutput:
        model, vq = glue.load_ursa(model_name, dtype)
        accelerate(model.model, attention=attention, compile=compile)
        return io.NodeOutput(model, vq)
