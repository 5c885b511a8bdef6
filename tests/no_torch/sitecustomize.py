"""`import torch` fails here as on a machine where torch is not installed: tests put this folder first on PYTHONPATH
and Python imports `sitecustomize` at startup, before any other code runs (no torch is uninstalled)."""
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "torchaudio"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
