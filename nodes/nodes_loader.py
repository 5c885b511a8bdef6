"""URSAModelLoader: a checkpoint folder from models/ursa/ -> URSA_MODEL + URSA_VQ."""
from __future__ import annotations

import logging
import os

import comfy.model_management as mm
from comfy_api.latest import io

from ursa_core import rules
from ursa_core.attention import backends as attention_backends
from ursa_core.runtime.loader_options import LOW_VRAM_MODES, MAX_BLOCKS, device_choices
from ursa_core.runtime.speed import SpeedOptions
from ursa_core.runtime.weight_dtype import STORAGE_DTYPES

from . import glue
from .types import URSAModel, URSAVQ

DTYPES = list(rules.DTYPES)
log = logging.getLogger(__name__)


def attention_choices() -> list[str]:
    return list(attention_backends.available_names(mm.get_torch_device()))


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
                               tooltip="URSA checkpoint folder under models/ursa/ (only folders whose configs are "
                                       "URSA's are listed; one whose download stopped is listed too, and choosing "
                                       "it says what is missing), e.g. URSA-1.7B-FSQ320 for video or "
                                       "URSA-1.7B-IBQ1024 for 1024px images. None yet? " + glue.DOWNLOAD_HINT),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Compute dtype (and storage dtype when weight_dtype is default). auto = bf16 "
                                       "on GPUs that support it, else fp16; fp32 on CPU. bf16: 3-4 % faster with "
                                       "FlashAttention-4 and fp32's range (no overflow); fp16: ~8x closer to fp32 "
                                       "per layer, as the reference's evaluation scripts run (measured: "
                                       "docs/ARCHITECTURE.md)."),
                io.Combo.Input("attention", options=attention_choices(), default="auto", optional=True,
                               tooltip="Attention kernel; only those that run on this machine are listed. auto = "
                                       "the fastest exact one available (FlashAttention-4 where installed, else "
                                       "cuDNN through PyTorch SDPA on H100); flash/cudnn/efficient/math pin one SDPA "
                                       "kernel; flex = FlexAttention (compiled, needs Triton); sage2 = SageAttention "
                                       "2's 8-bit kernel (Hopper, built from source: faster, ~4-5 % error on the "
                                       "attention output, never picked by auto)."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the layers (about 23% faster per step on an H100; the first "
                                         "run of each size compiles for ~15 s; needs Triton). Combines with "
                                         "streaming."),
                io.Combo.Input("weight_dtype", options=list(STORAGE_DTYPES), default="default", optional=True,
                               tooltip="Weight storage, as core's UNETLoader: default = the compute dtype; "
                                       "fp8_e4m3fn / fp8_e5m2 store the layers' projection weights in fp8 (about "
                                       "half the memory of bf16) and upcast each layer to the compute dtype as it "
                                       "runs. Changes results slightly (fp8 rounding)."),
                io.Combo.Input("low_vram", options=list(LOW_VRAM_MODES), default="auto", optional=True,
                               tooltip="Block swap. auto = like core models: everything on the GPU when it fits, "
                                       "else (or under --lowvram / --novram) as many layers as fit stay and the rest "
                                       "stream from RAM each step. off = never stream. stream = keep blocks_on_gpu "
                                       "layers, stream the rest."),
                io.Int.Input("blocks_on_gpu", default=0, min=0, max=MAX_BLOCKS, optional=True,
                             tooltip="With low_vram = stream: how many of the decoder layers (28 in URSA-1.7B) stay "
                                     "on the GPU; more = faster, less = less VRAM. A count >= the layer count "
                                     "keeps them all. Ignored by auto and off."),
                io.Combo.Input("vq_device", options=device_choices(), default="default", optional=True,
                               tooltip="Where the visual tokenizer (encode/decode) runs: default = ComfyUI's VAE "
                                       "device, cpu, or another GPU. Tokens move between devices by themselves."),
                io.Combo.Input("text_device", options=device_choices(), default="default", optional=True,
                               tooltip="Where the text side lives: the token embedding table (text vocabulary + "
                                       "visual codes, 0.9 GB in bf16 for URSA-1.7B). default = ComfyUI's text "
                                       "encoder device (the CPU under --lowvram); cpu keeps it in RAM and sends only "
                                       "the embedded tokens to the GPU each step; or another GPU."),
                io.Combo.Input("transformer_weights", options=weight_choices(), default=glue.NO_FILE, optional=True,
                               tooltip="Fine-tuned transformer weights from models/diffusion_models/ loaded over "
                                       "the checkpoint's (e.g. the RL-tuned URSA-1.7B-IBQ512 transformers of "
                                       "UDM-GRPO: use them with the IBQ512 checkpoint and the sampler's rl_tuned "
                                       "preset). .safetensors, or tensors-only .bin/.pt/.pth; none = the "
                                       "checkpoint's own."),
            ],
            outputs=[URSAModel.Output(display_name="model",
                                      tooltip="The URSA transformer, its metric path and prompt tokenizer: connect "
                                              "to URSA Text Encode, URSA Sampler, URSA Extend Video."),
                     URSAVQ.Output(display_name="vq",
                                   tooltip="The visual tokenizer (FSQ or IBQ): connect to URSA Tokenizer Encode / "
                                           "Decode."),
                     io.String.Output(display_name="info",
                                      tooltip="Which model this is and the defaults the sampler uses for widgets "
                                              "left at 0 (also shown on this node after it ran).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, model_name=None):
        # Only model_name: ComfyUI files the answer under every input named here (nodes/widgets.py). The other
        # combos (transformer_weights included) are core's membership checks.
        return model_name is None or glue.model_folder_problem(model_name) or True

    @classmethod
    def fingerprint_inputs(cls, model_name=None, transformer_weights=glue.NO_FILE, **options):
        folder = glue.model_folder_path(model_name)
        files = [p for p in folder.rglob("*") if p.is_file()]
        if transformer_weights != glue.NO_FILE:
            files.append(glue.tensor_file_path(glue.WEIGHTS_FOLDER, transformer_weights, "transformer_weights"))
        return max(os.path.getmtime(p) for p in files)

    @classmethod
    def execute(cls, model_name, dtype, attention="auto", compile=False, weight_dtype="default", low_vram="auto",
                blocks_on_gpu=0, vq_device="default", text_device="default",
                transformer_weights=glue.NO_FILE) -> io.NodeOutput:
        # core checked each widget against its own list/range; SpeedOptions checks the same rules before loading
        options = SpeedOptions(attention=attention, compile=compile, weight_dtype=weight_dtype, low_vram=low_vram,
                               blocks_on_gpu=blocks_on_gpu, vq_device=vq_device, text_device=text_device)
        model, vq = glue.load_ursa(model_name, dtype, options, transformer_weights)
        info = model.model.identity.describe() + ("" if transformer_weights == glue.NO_FILE else
                                                   f"; transformer weights {transformer_weights}")
        log.info("URSA Model Loader: %s", info)
        glue.NodeText(cls.hidden.unique_id, info).show()   # on the node, as the sampler shows its clip's size
        return io.NodeOutput(model, vq, info)


def weight_choices() -> list[str]:
    return [glue.NO_FILE, *glue.list_tensor_files(glue.WEIGHTS_FOLDER)]
