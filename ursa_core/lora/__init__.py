"""LoRAs: PEFT adapter folders and single LoRA files read (files.py) and applied where each decoder layer's weights are
fetched (patch.py)."""
