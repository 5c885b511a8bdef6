"""Prompt sets for evaluation runs: read them, name their outputs, share them between ranks, resume."""
