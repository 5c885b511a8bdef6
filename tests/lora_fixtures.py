"""PEFT LoRAs on the tiny transformer, made at test time with `peft` itself (the ground truth of the LoRA tests)."""
import copy

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_adapter(model, folder, seed=0, scale=0.1, safe=False, **config):
    """A PEFT LoRA on the transformer's official module names with random A and B (PEFT starts B at 0), saved as
    upstream's trainer saves it (`safe_serialization=False`: adapter_model.bin) unless `safe`; returns the PEFT
    model (its `merge_and_unload()` is PEFT's own merge)."""
    from peft import LoraConfig, get_peft_model
    options = dict(r=4, lora_alpha=8, target_modules=TARGETS)
    options.update(config)
    wrapped = get_peft_model(copy.deepcopy(model.transformer).float(), LoraConfig(**options))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.copy_(scale * torch.randn(param.shape, generator=gen))
    wrapped.save_pretrained(str(folder), safe_serialization=safe)
    return wrapped
