"""ComfyUI entry point of the URSA plugin (V3: `comfy_entrypoint`; no NODE_CLASS_MAPPINGS on purpose, since
ComfyUI ignores the V3 entry point of a module that has them)."""
import importlib.util
import os
import sys

WEB_DIRECTORY = "./web"

# ursa_core is imported by absolute name from the node modules; make this folder importable without copying it.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

__all__ = ["WEB_DIRECTORY"]
if importlib.util.find_spec("comfy_api") is not None:  # inside ComfyUI; plain imports (tests, CLI) skip the nodes
    from .nodes import comfy_entrypoint  # noqa: E402,F401
    __all__.append("comfy_entrypoint")
