"""The zh locale (ComfyUI serves custom_nodes/<pack>/locales/<lang>/nodeDefs.json at /i18n; the frontend shows it
instead of the schema's English): every node, input and output of the schemas has an entry, and nothing else."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ["zh"]


@pytest.fixture
def schemas(comfy):
    import nodes  # imported under the ComfyUI stand-ins
    return {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA() for cls in nodes.NODES}


def expected_inputs(schema) -> set[str]:
    """Input ids, plus the frontend's control_after_generate widget where a seed has one."""
    ids = {i.id for i in schema.inputs}
    if any(getattr(i, "control_after_generate", None) for i in schema.inputs):
        ids.add("control_after_generate")
    return ids


@pytest.mark.parametrize("locale", LOCALES)
def test_locale_covers_every_node_input_and_output(schemas, locale):
    defs = json.loads((ROOT / "locales" / locale / "nodeDefs.json").read_text(encoding="utf-8"))
    assert set(defs) == set(schemas)
    for node_id, schema in schemas.items():
        entry = defs[node_id]
        assert entry["display_name"].strip() and entry["description"].strip(), node_id
        assert set(entry["inputs"]) == expected_inputs(schema), node_id
        for inp in schema.inputs:
            words = entry["inputs"][inp.id]
            assert words["name"].strip() and words["tooltip"].strip(), f"{node_id}.{inp.id}"
        assert set(entry["outputs"]) == {str(i) for i in range(len(schema.outputs))}, node_id
        for index, words in entry["outputs"].items():
            assert words["name"].strip() and words["tooltip"].strip(), f"{node_id} output {index}"


@pytest.mark.parametrize("locale", LOCALES)
def test_locale_is_translated(schemas, locale):
    """Not a copy of the English: every display name differs from the schema's."""
    defs = json.loads((ROOT / "locales" / locale / "nodeDefs.json").read_text(encoding="utf-8"))
    for node_id, schema in schemas.items():
        assert defs[node_id]["display_name"] != schema.display_name, node_id
