"""The URSA transformer: its config, the Qwen3-style decoder stack, its rotary positions and its input sequence."""
