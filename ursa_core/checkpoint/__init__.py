"""Checkpoint folders: the one load (`loader.load_model` -> `URSAModel`), the prompt encoder, tiny random
checkpoints."""
