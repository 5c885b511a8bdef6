"""Prompt to tokens: the settings of a generation, the sampling loop over a branch runner (`generate`),
sliding-window extension, the checks made before a run, cheap previews."""
