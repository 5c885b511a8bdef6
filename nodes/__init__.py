"""ComfyUI V3 nodes over ursa_core. Node ids and input order are a promise to saved workflows: new inputs go last."""
from comfy_api.latest import ComfyExtension, io

from .nodes_devices import URSADevices
from .nodes_extend import URSAExtendVideo
from .nodes_loader import URSAModelLoader
from .nodes_mask import URSAMaskSchedule, URSAPadForOutpaint, URSARepaintComposite
from .nodes_lora import URSALoraLoader
from .nodes_sampler import URSASampler
from .nodes_schedule import URSAFrameSchedule
from .nodes_text import URSATextEncode
from .nodes_tokenizer import URSATokenizerDecode, URSATokenizerEncode
from .nodes_tokens_io import URSALoadTokens, URSASaveTokens

NODES = [URSAModelLoader, URSALoraLoader, URSADevices, URSATextEncode, URSATokenizerEncode, URSATokenizerDecode,
         URSAFrameSchedule, URSASampler, URSAExtendVideo, URSASaveTokens, URSALoadTokens, URSAMaskSchedule,
         URSAPadForOutpaint, URSARepaintComposite]


class URSAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> URSAExtension:
    return URSAExtension()
