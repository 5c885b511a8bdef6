"""How a loaded model runs, as one typed object both front ends build (the CLI's flags, the loader node's widgets):
attention kernel, compiled layers, fp8 weight storage, block swap and where the tokenizer and the text side live."""
from __future__ import annotations

from dataclasses import dataclass

from .. import rules


@dataclass(frozen=True)
class SpeedOptions:
    attention: str = "auto"          # a name of the attention registry (model/attention.py)
    compile: bool = False            # torch.compile of the layer halves around attention (runtime/compiled.py)
    weight_dtype: str = "default"    # fp8 storage of the layers' projections (runtime/weight_dtype.py)
    low_vram: str = "off"            # block swap: auto (from free memory), off, stream (runtime/lowvram.py)
    blocks_on_gpu: int = 0           # with stream: decoder layers that stay on the GPU
    vq_device: str = "default"       # where the visual tokenizer runs; default: the front end's choice
    text_device: str = "default"     # where the token embedding table lives; default: the front end's choice

    def __post_init__(self):
        rules.attention(self.attention)
        rules.weight_dtype(self.weight_dtype)
        rules.low_vram_mode(self.low_vram)
        rules.blocks_on_gpu(self.blocks_on_gpu)
        rules.placement("vq_device", self.vq_device)
        rules.placement("text_device", self.text_device)

    @property
    def streams(self) -> bool:
        """Layers always stream (the CLI's --low-vram); auto decides from free memory when the model is placed."""
        return self.low_vram == "stream"
