"""Refresh scripts/node_schemas.json from the node classes, imported under the ComfyUI stand-ins (no server needed).

    .venv/bin/python tests/refresh_node_schemas.py

The core nodes' entries are kept as they are (they come from a real ComfyUI: make_workflows.py --dump-schemas).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ursa_node_infos() -> dict[str, dict]:
    """/object_info-shaped entries of the plugin's nodes (imported with the stand-ins, then un-imported)."""
    sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "tests")) if p not in sys.path]
    import comfy_stubs

    saved = {k: sys.modules.get(k) for k in list(sys.modules) if k == "nodes" or k.startswith("nodes.")}
    with tempfile.TemporaryDirectory() as tmp:
        modules = comfy_stubs.build_modules(comfy_stubs.ComfyStubState(tmp))
        previous = {k: sys.modules.get(k) for k in modules}
        sys.modules.update(modules)
        try:
            for k in saved:
                sys.modules.pop(k, None)
            import nodes
            return {cls.GET_SCHEMA().node_id: {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                                               "output_name": list(cls.RETURN_NAMES)} for cls in nodes.NODES}
        finally:
            for k, v in previous.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
            for k in [k for k in sys.modules if k == "nodes" or k.startswith("nodes.")]:
                sys.modules.pop(k, None)
            sys.modules.update({k: v for k, v in saved.items() if v is not None})


def main() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_workflows
    current = json.loads(make_workflows.SCHEMAS_FILE.read_text(encoding="utf-8"))
    infos = {k: v for k, v in current.items() if not k.startswith("URSA")}
    infos.update(ursa_node_infos())
    make_workflows.write_schemas(infos)
    print(f"wrote {make_workflows.SCHEMAS_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
