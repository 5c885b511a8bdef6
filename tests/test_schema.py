"""Static checks of the node schemas, their docs and the shipped workflows (no model, no real ComfyUI needed)."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_workflows  # noqa: E402

import workflow_layout  # noqa: E402
from refresh_node_schemas import ursa_node_infos  # noqa: E402

SNAPSHOT = json.loads(make_workflows.SCHEMAS_FILE.read_text(encoding="utf-8"))
CORE_NODES = {k: v for k, v in SNAPSHOT.items() if not k.startswith("URSA")}
UI_WORKFLOWS = sorted(make_workflows.OUT_DIR.glob("*.json"))
API_WORKFLOWS = sorted((make_workflows.OUT_DIR / "api").glob("*.json"))
TEMPLATE_BY_TITLE = {t.title: t for t in make_workflows.TEMPLATES}
NODE_IDS = ["URSAModelLoader", "URSALoraLoader", "URSADevices", "URSATextEncode", "URSATokenizerEncode",
            "URSATokenizerDecode", "URSAFrameSchedule", "URSASampler", "URSAExtendVideo", "URSASaveTokens",
            "URSALoadTokens", "URSAMaskSchedule", "URSAPadForOutpaint", "URSARepaintComposite"]


@pytest.fixture
def ursa_nodes(comfy):
    import nodes  # imported under the ComfyUI stand-ins
    return list(nodes.NODES)


@pytest.fixture
def specs(ursa_nodes):
    """Normalised input/output lists (frontend order) of our nodes and of the allowed core nodes."""
    out = {cls.GET_SCHEMA().node_id: make_workflows.normalize_info(
        {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES), "output_name": list(cls.RETURN_NAMES)})
        for cls in ursa_nodes}
    out.update({name: make_workflows.normalize_info(info) for name, info in CORE_NODES.items()})
    return out


# ----------------------------------------------------------------------------------------------- schemas
def test_node_ids_unique_prefixed_and_categorised(ursa_nodes):
    schemas = [cls.GET_SCHEMA() for cls in ursa_nodes]
    ids = [s.node_id for s in schemas]
    assert sorted(ids) == sorted(NODE_IDS) and len(set(ids)) == len(ids)
    for s in schemas:
        assert s.node_id.startswith("URSA"), s.node_id
        assert s.category.startswith("URSA/"), (s.node_id, s.category)
        assert s.display_name and s.description, s.node_id


def test_inputs_have_tooltips_and_sane_defaults(ursa_nodes):
    for cls in ursa_nodes:
        schema = cls.GET_SCHEMA()
        for inp in schema.inputs:
            where = f"{schema.node_id}.{inp.id}"
            assert isinstance(inp.tooltip, str) and inp.tooltip.strip(), f"{where}: no tooltip"
            io_type = inp.get_io_type()
            default = getattr(inp, "default", None)
            if io_type in ("INT", "FLOAT") and default is not None:
                lo, hi = getattr(inp, "min", None), getattr(inp, "max", None)
                assert lo is None or default >= lo, f"{where}: default {default} < min {lo}"
                assert hi is None or default <= hi, f"{where}: default {default} > max {hi}"
                if io_type == "INT":
                    assert isinstance(default, int), where
            if io_type == "COMBO" and default is not None and inp.options:
                assert default in inp.options, f"{where}: default {default!r} not in {inp.options}"


def test_validate_inputs_signatures(ursa_nodes):
    """Core calls validate_inputs with only the inputs present (linked ones as None), so every parameter needs a
    default; **kwargs would also re-enable nothing and hide which inputs the node checks itself."""
    for cls in ursa_nodes:
        func = cls.__dict__.get("validate_inputs")
        if func is None:
            continue
        spec = inspect.getfullargspec(func.__func__)
        name = cls.GET_SCHEMA().node_id
        assert spec.varkw is None, f"{name}.validate_inputs takes **{spec.varkw}"
        params = spec.args[1:]  # drop cls
        assert len(spec.defaults or ()) == len(params), f"{name}.validate_inputs: every parameter needs a default"
        inputs = {i.id for i in cls.GET_SCHEMA().inputs}
        assert set(params) <= inputs | {"input_types"}, f"{name}.validate_inputs names unknown inputs"


HELP_LOCALES = ("en", "zh")


def test_every_node_has_help_pages_where_the_frontend_looks(ursa_nodes):
    """The frontend asks for web/docs/<Node>/<locale>.md first and falls back to web/docs/<Node>.md (other locales);
    the fallback is the English page, byte for byte."""
    for cls in ursa_nodes:
        schema = cls.GET_SCHEMA()
        for locale in HELP_LOCALES:
            doc = ROOT / "web" / "docs" / schema.node_id / f"{locale}.md"
            assert doc.is_file(), f"missing {doc.relative_to(ROOT)}"
            text = doc.read_text(encoding="utf-8")
            for inp in schema.inputs:
                assert f"`{inp.id}`" in text, f"{doc.relative_to(ROOT)} does not describe input `{inp.id}`"
        fallback = ROOT / "web" / "docs" / f"{schema.node_id}.md"
        assert fallback.read_bytes() == (ROOT / "web" / "docs" / schema.node_id / "en.md").read_bytes(), \
            f"{fallback.relative_to(ROOT)} differs from its en.md (copy en.md over it)"


def test_outputs_have_tooltips(ursa_nodes):
    for cls in ursa_nodes:
        schema = cls.GET_SCHEMA()
        for out in schema.outputs:
            assert isinstance(out.tooltip, str) and out.tooltip.strip(), f"{schema.node_id}.{out.display_name}"


def test_every_node_in_readme(ursa_nodes):
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet")
    text = readme.read_text(encoding="utf-8")
    missing = [cls.GET_SCHEMA().node_id for cls in ursa_nodes if cls.GET_SCHEMA().node_id not in text]
    assert not missing, f"README.md does not mention {missing}"


# ----------------------------------------------------------------------------------------------- workflows
def test_templates_live_in_the_top_level_workflows_folder():
    """The design names `workflows/`, one of the folders ComfyUI serves a custom node's templates from
    (app/custom_node_manager.py: example_workflows, example, examples, workflow, workflows); one folder only, so the
    template browser never lists a template twice."""
    assert make_workflows.OUT_DIR == ROOT / "workflows"
    served = ("example_workflows", "example", "examples", "workflow", "workflows")
    assert [name for name in served if (ROOT / name).is_dir()] == ["workflows"]


def test_workflows_exist_in_pairs_with_thumbnails():
    assert UI_WORKFLOWS and sorted(p.stem for p in UI_WORKFLOWS) == sorted(TEMPLATE_BY_TITLE)
    assert sorted(p.stem for p in API_WORKFLOWS) == sorted(t.id for t in make_workflows.TEMPLATES)
    for path in UI_WORKFLOWS:  # the template browser asks for <name>.jpg (mediaSubtype 'jpg' for custom nodes)
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"no thumbnail {thumb.name}"
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff" and thumb.stat().st_size < 20_000, thumb.name
    for path in UI_WORKFLOWS + API_WORKFLOWS:
        assert path.stat().st_size < 2_000_000, path


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_nodes_and_inputs_known(path, specs):
    graph = json.loads(path.read_text(encoding="utf-8"))
    for nid, node in graph.items():
        spec = specs.get(node["class_type"])
        assert spec is not None, f"{path.name}: node {nid} has unknown type {node['class_type']}"
        names = {i["name"]: i for i in spec["inputs"]}
        for name, value in node["inputs"].items():
            assert name in names, f"{path.name}: {node['class_type']} has no input {name!r}"
            if isinstance(value, list):  # a link [src_id, slot]
                src = graph[value[0]]
                assert value[1] < len(specs[src["class_type"]]["outputs"]), f"{path.name}: bad link {value}"
        required = {n for n, i in names.items() if not i["optional"]}
        assert required <= set(node["inputs"]), f"{path.name}: node {nid} misses {required - set(node['inputs'])}"
        assert node.get("_meta", {}).get("title"), f"{path.name}: node {nid} has no title"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_widgets_and_links(path, specs):
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert wf["version"] == 0.4 and {"last_node_id", "last_link_id", "groups", "config", "extra"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        if node["type"] == make_workflows.NOTE_TYPE:  # frontend-only node
            model = TEMPLATE_BY_TITLE[path.stem].model   # the checkpoint its loader names
            loaders = [n for n in wf["nodes"] if n["type"] == "URSAModelLoader"]
            assert all(n["widgets_values"][0] == model for n in loaders), f"{path.name}: loader model"
            assert model in node["widgets_values"][0], f"{path.name}: note lacks the model"
            continue
        spec = specs.get(node["type"])
        assert spec is not None, f"{path.name}: unknown node type {node['type']}"
        widgets = [i for i in spec["inputs"] if i["widget"]]
        expected = len(widgets) + sum(1 for i in widgets if i["frontend_extra"])
        assert len(node["widgets_values"]) == expected, f"{path.name}: {node['type']} widgets_values"
        assert node["properties"]["Node name for S&R"] == node["type"]
    for link_id, src, src_slot, dst, dst_slot, io_type in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id, f"{path.name}: link {link_id} not on both ends"
        assert out["type"] == inp["type"] == io_type, f"{path.name}: link {link_id} type mismatch"
    all_ids = [lk[0] for lk in wf["links"]]
    used_in = [i["link"] for n in wf["nodes"] for i in n["inputs"] if i["link"] is not None]
    used_out = [lid for n in wf["nodes"] for o in n["outputs"] for lid in (o["links"] or [])]
    assert sorted(used_in) == sorted(used_out) == sorted(all_ids), f"{path.name}: dangling link ids"
    assert wf["last_link_id"] == max(all_ids, default=0) and wf["last_node_id"] == max(nodes)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_and_api_twins_match(path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    template = TEMPLATE_BY_TITLE[path.stem]
    api = json.loads((make_workflows.OUT_DIR / "api" / f"{template.id}.json").read_text(encoding="utf-8"))
    graph_nodes = [n for n in ui["nodes"] if n["type"] != make_workflows.NOTE_TYPE]
    assert sorted((str(n["id"]), n["type"], n["title"]) for n in graph_nodes) == \
        sorted((nid, n["class_type"], n["_meta"]["title"]) for nid, n in api.items())
    # The frontend matches properties.models against model FILES; the loader takes a folder: never list one.
    assert not [n for n in ui["nodes"] if "models" in n["properties"]], f"{path.name}: properties.models"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_layout_open_clean(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert workflow_layout.layout_problems(wf["nodes"], wf["groups"], wf["extra"]["ds"]) == []
    assert wf["groups"], f"{path.name}: no groups"
    pos = {n["id"]: n["pos"] for n in wf["nodes"]}
    titles = {n["id"]: n["title"] for n in wf["nodes"]}
    for _, src, _, dst, _, _ in wf["links"]:  # left to right within a band; a wrap only goes to a lower band
        assert pos[dst][0] > pos[src][0] or pos[dst][1] > pos[src][1], (titles[src], titles[dst])
    assert wf["extra"]["ds"]["scale"] >= 0.4, "the saved view is too small to read anything"


def test_interpolation_template_starts_and_ends_on_different_frames():
    """ComfyUI ships one example image: the end frame is its mirror image (core's Image Flip), so the template runs
    as shipped and interpolates between two different frames."""
    api = json.loads((make_workflows.OUT_DIR / "api" / "ursa_interpolation.json").read_text(encoding="utf-8"))
    by_title = {n["_meta"]["title"]: (nid, n) for nid, n in api.items()}
    start_source = by_title["URSA Encode Start"][1]["inputs"]["image"]
    end_source = by_title["URSA Encode End"][1]["inputs"]["image"]
    assert start_source != end_source
    flip = api[end_source[0]]
    assert flip["class_type"] == "ImageFlip" and flip["inputs"]["image"] == start_source


def test_frame_schedule_tells_the_frontend_which_modes_read_an_input():
    """web/js/ursa.js shows given_frames and keyframes only in the modes listed here (the node definition)."""
    inputs = {i["name"]: i for i in make_workflows.load_specs()["URSAFrameSchedule"]["inputs"]}
    assert inputs["given_frames"]["modes"] == ["extension"] and inputs["keyframes"]["modes"] == ["custom keyframes"]
    assert all(inputs[name]["modes"] is None for name in ("mode", "frames", "start_time", "hold"))
    script = (ROOT / "web" / "js" / "ursa.js").read_text(encoding="utf-8")
    assert '"ursa_modes"' in script and '"ursa_token_file"' in script


def test_layout_check_catches_overlap_and_off_view():
    a = {"id": 1, "title": "a", "pos": [0, 30], "size": [300, 200]}
    b = {"id": 2, "title": "b", "pos": [100, 150], "size": [300, 200]}  # its title bar overlaps a's body
    ds = workflow_layout.fit_view([workflow_layout.node_rect(n["pos"], n["size"]) for n in (a, b)])
    assert any("overlap" in p for p in workflow_layout.layout_problems([a, b], [], ds))
    b["pos"] = [0, 30 + 200 + workflow_layout.TITLE_HEIGHT]
    assert workflow_layout.layout_problems([a, b], [], ds) == []  # stacked, touching: fine
    far = {"id": 3, "title": "far", "pos": [5000, 30], "size": [300, 200]}
    assert any("outside" in p for p in workflow_layout.layout_problems([a, far], [], ds))


def test_node_schema_snapshot_matches_nodes():
    """make_workflows reads node_schemas.json (no ComfyUI, no tests/ import); it must equal the node classes."""
    fresh = {k: make_workflows.trim_info(v) for k, v in ursa_node_infos().items()}
    stored = {k: v for k, v in SNAPSHOT.items() if k.startswith("URSA")}
    assert stored == fresh, "node schemas changed: run .venv/bin/python tests/refresh_node_schemas.py"


def test_workflows_are_generated():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_workflows.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
