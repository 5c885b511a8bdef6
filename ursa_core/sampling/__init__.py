"""Prompt to tokens: the sampling loop (`generate`), sliding-window extension and the checks made before a run."""
