"""The URSA transformer: its config, the Qwen3-style decoder stack, rotary positions, the input sequence and the
attention backends (Ulysses sequence parallel among them)."""
