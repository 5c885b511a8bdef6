#!/usr/bin/env python3
"""Write the example workflows, each described ONCE below, in both ComfyUI formats:

* ``workflows/<name>.json``: UI format (workflow_json 0.4) for the template browser and drag & drop;
* ``workflows/api/<name>.json``: API format for ``POST /prompt`` / ``scripts/comfy_queue.py``.

Widget lists come from the node schemas themselves, so the files cannot drift from the nodes: the URSA nodes are
imported with the test stand-ins for ComfyUI (``tests/comfy_stubs.py``), the core nodes are read from
``tests/data/core_nodes_0.8.0.json`` (taken from a real ComfyUI 0.8.0 ``/object_info`` with ``--dump-core``).

    python scripts/make_workflows.py            # (re)write workflows/
    python scripts/make_workflows.py --check    # exit 1 if the committed files differ from a fresh build
    python scripts/make_workflows.py --dump-core http://127.0.0.1:8188   # refresh the core node list
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE_NODES_FILE = ROOT / "tests" / "data" / "core_nodes_0.8.0.json"
CORE_NODES_USED = ["LoadImage", "SaveImage", "CreateVideo", "SaveVideo", "ImageScaleBy"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

MODEL_NAME = "URSA-1.7B-FSQ320"
MODEL_LINKS = [{"name": MODEL_NAME, "url": "https://huggingface.co/BAAI/URSA-1.7B-FSQ320", "directory": "ursa"}]
NEGATIVE = "worst quality, low quality, inconsistent motion, static, still, blurry, jittery, distorted, ugly"


# ----------------------------------------------------------------------------------------------- node specs
def normalize_info(info: dict) -> dict:
    """V1 node info (``/object_info`` entry shape) -> {"inputs": [...], "outputs": [...]} in frontend order."""
    inputs = []
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            io_type, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
            io_type = "COMBO" if isinstance(io_type, list) else io_type
            widget = io_type in WIDGET_TYPES and not opts.get("forceInput")
            entry = {"name": name, "type": io_type, "optional": section == "optional", "widget": widget}
            if widget:
                extra = ("fixed" if opts.get("control_after_generate") else
                         "image" if opts.get("image_upload") else None)
                entry.update(default=opts.get("default"), frontend_extra=extra)
            inputs.append(entry)
    names = info.get("output_name") or info.get("output", [])
    outputs = [{"name": n, "type": t} for n, t in zip(names, info.get("output", []))]
    return {"inputs": inputs, "outputs": outputs}


def ursa_node_infos() -> dict[str, dict]:
    """V1 node infos of the plugin's nodes, imported under the ComfyUI stand-ins (no ComfyUI needed)."""
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


def load_specs() -> dict[str, dict]:
    core = json.loads(CORE_NODES_FILE.read_text(encoding="utf-8"))
    specs = {name: normalize_info(info) for name, info in ursa_node_infos().items()}
    specs.update({name: normalize_info(info) for name, info in core.items()})
    return specs


def dump_core(server: str) -> None:
    """Keep only what the workflows and tests need from a real server's /object_info."""
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        info = json.load(r)
    keep_opts = ("default", "control_after_generate", "image_upload", "forceInput")
    out = {}
    for name in CORE_NODES_USED:
        node = info[name]
        sections = {}
        for section in ("required", "optional"):
            for inp, spec in (node["input"].get(section) or {}).items():
                io_type = "COMBO" if isinstance(spec[0], list) else spec[0]
                opts = spec[1] if len(spec) > 1 else {}
                sections.setdefault(section, {})[inp] = [io_type, {k: opts[k] for k in keep_opts if k in opts}]
        out[name] = {"input": sections, "output": node["output"], "output_name": node["output_name"],
                     "python_module": node.get("python_module")}
    CORE_NODES_FILE.parent.mkdir(parents=True, exist_ok=True)
    CORE_NODES_FILE.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {CORE_NODES_FILE}")


# ----------------------------------------------------------------------------------------------- graph DSL
@dataclass
class Out:
    node: "Node"
    slot: int


@dataclass
class Node:
    id: int
    type: str
    title: str
    grid: tuple
    values: dict
    spec: dict
    properties: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> Out:
        names = [o["name"] for o in self.spec["outputs"]]
        if name not in names:
            raise KeyError(f"{self.type} has no output {name!r}; outputs: {names}")
        return Out(self, names.index(name))


class Graph:
    def __init__(self, name: str, specs: dict):
        self.name, self.specs, self.nodes = name, specs, []

    def node(self, type_: str, title: str, grid: tuple, properties: dict | None = None, **values) -> Node:
        spec = self.specs[type_]
        known = {i["name"]: i for i in spec["inputs"]}
        for key, value in values.items():
            if key not in known:
                raise KeyError(f"{self.name}: {type_} has no input {key!r}; inputs: {list(known)}")
            if not known[key]["widget"] and not isinstance(value, Out):
                raise TypeError(f"{self.name}: {type_}.{key} is a socket; connect an output")
        for i in spec["inputs"]:
            if not i["widget"] and not i["optional"] and i["name"] not in values:
                raise ValueError(f"{self.name}: {type_}.{i['name']} (required socket) is not connected")
            if i["widget"] and i["name"] not in values and i["default"] is None:
                raise ValueError(f"{self.name}: {type_}.{i['name']} has no default; give a value")
        node = Node(len(self.nodes) + 1, type_, title, grid, values, spec, properties or {})
        self.nodes.append(node)
        return node


# ----------------------------------------------------------------------------------------------- writers
def _links(graph: Graph) -> list[list]:
    links = []
    for node in graph.nodes:
        for slot, inp in enumerate(node.spec["inputs"]):
            value = node.values.get(inp["name"])
            if isinstance(value, Out):
                links.append([len(links) + 1, value.node.id, value.slot, node.id, inp["name"],
                              value.node.spec["outputs"][value.slot]["type"]])
    return links


def _order(graph: Graph) -> dict[int, int]:
    deps = {n.id: {v.node.id for v in n.values.values() if isinstance(v, Out)} for n in graph.nodes}
    order, done = {}, set()
    while len(done) < len(deps):
        ready = sorted(i for i, d in deps.items() if i not in done and d <= done)
        for i in ready:
            order[i] = len(order)
        done |= set(ready)
    return order


def _widget_values(node: Node) -> list:
    values = []
    for inp in node.spec["inputs"]:
        if inp["widget"]:
            value = node.values.get(inp["name"], inp["default"])
            values.append(inp["default"] if isinstance(value, Out) else value)
            if inp["frontend_extra"]:
                values.append(inp["frontend_extra"])
    return values


def to_ui(graph: Graph) -> dict:
    links, order = _links(graph), _order(graph)
    ui_nodes = []
    for node in graph.nodes:
        in_links = {lk[4]: lk for lk in links if lk[3] == node.id}
        sockets = [i for i in node.spec["inputs"] if not i["widget"]]
        linked_widgets = [i for i in node.spec["inputs"] if i["widget"] and i["name"] in in_links]
        inputs = []
        for inp in sockets + linked_widgets:
            entry = {"name": inp["name"], "type": inp["type"]}
            if inp["widget"]:
                entry["widget"] = {"name": inp["name"]}
            elif inp["optional"]:
                entry["shape"] = 7
            entry["link"] = in_links[inp["name"]][0] if inp["name"] in in_links else None
            inputs.append(entry)
        outputs = [{"name": o["name"], "type": o["type"], "slot_index": s,
                    "links": [lk[0] for lk in links if lk[1] == node.id and lk[2] == s]}
                   for s, o in enumerate(node.spec["outputs"])]
        widgets = _widget_values(node)
        height = 46 + 24 * (max(len(inputs), len(outputs)) + len(widgets))
        ui_nodes.append({
            "id": node.id, "type": node.type, "title": node.title,
            "pos": [40 + 380 * node.grid[0], 40 + 300 * node.grid[1]], "size": [340, max(height, 100)],
            "flags": {}, "order": order[node.id], "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": node.type, **node.properties}, "widgets_values": widgets})
    ui_links = []
    for lk in links:
        dst = next(n for n in ui_nodes if n["id"] == lk[3])
        to_slot = [i["name"] for i in dst["inputs"]].index(lk[4])
        ui_links.append([lk[0], lk[1], lk[2], lk[3], to_slot, lk[5]])
    return {"last_node_id": len(graph.nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def to_api(graph: Graph) -> dict:
    api = {}
    for node in graph.nodes:
        inputs = {}
        for inp in node.spec["inputs"]:
            value = node.values.get(inp["name"], inp.get("default") if inp["widget"] else None)
            if isinstance(value, Out):
                inputs[inp["name"]] = [str(value.node.id), value.slot]
            elif inp["widget"]:
                inputs[inp["name"]] = value
        api[str(node.id)] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": node.title}}
    return api


# ----------------------------------------------------------------------------------------------- workflows
def _base(g: Graph, prompt: str, negative: str = NEGATIVE):
    loader = g.node("URSAModelLoader", "URSA Loader", (0, 0), {"models": MODEL_LINKS}, model_name=MODEL_NAME,
                    dtype="auto")
    cond = g.node("URSATextEncode", "URSA Prompt", (1, 0), model=loader["model"], prompt=prompt,
                  negative_prompt=negative, motion_score=9.0)
    return loader, cond


def _video_out(g: Graph, loader: Node, tokens: Out, prefix: str, col: int, upscale: bool = False) -> None:
    decode = g.node("URSATokenizerDecode", "URSA Decode", (col, 0), vq=loader["vq"], tokens=tokens)
    images = decode["images"]
    if upscale:
        images = g.node("ImageScaleBy", "Upscale 2x", (col, 1), image=images, upscale_method="bicubic",
                        scale_by=2.0)["IMAGE"]
    video = g.node("CreateVideo", "Create Video", (col + 1, 0), images=images, fps=decode["fps"])
    g.node("SaveVideo", "Save Video", (col + 2, 0), video=video["VIDEO"], filename_prefix=f"video/{prefix}",
           format="auto", codec="auto")


def _sampler(g: Graph, loader, cond, grid, frames, steps, **extra) -> Node:
    return g.node("URSASampler", "URSA Sampler", grid, model=loader["model"], conditioning=cond["conditioning"],
                  seed=42, steps=steps, frames=frames, width=512, height=320, **extra)


def wf_t2i(g: Graph) -> None:
    loader, cond = _base(g, "a red fox sitting in fresh snow at sunrise, soft golden light, highly detailed",
                         negative="")
    tokens = _sampler(g, loader, cond, (2, 0), frames=1, steps=25)["tokens"]
    images = g.node("URSATokenizerDecode", "URSA Decode", (3, 0), vq=loader["vq"], tokens=tokens)["images"]
    g.node("SaveImage", "Save Image", (4, 0), images=images, filename_prefix="URSA/t2i")


def wf_t2v(g: Graph) -> None:
    loader, cond = _base(g, "a red fox trotting through fresh snow in a pine forest, camera tracking, cinematic")
    tokens = _sampler(g, loader, cond, (2, 0), frames=49, steps=50)["tokens"]
    _video_out(g, loader, tokens, "URSA_t2v", 3)


def _encode(g: Graph, loader, title_suffix: str, row: int) -> Node:
    image = g.node("LoadImage", f"{title_suffix} Image", (0, row), image="example.png")
    return g.node("URSATokenizerEncode", f"URSA Encode {title_suffix}", (1, row), vq=loader["vq"],
                  image=image["IMAGE"], width=512, height=320, resize_mode="crop")


def wf_i2v(g: Graph) -> None:
    loader, cond = _base(g, "the scene comes alive: gentle wind, drifting clouds, the camera slowly pushes in")
    start = _encode(g, loader, "Start", 1)
    sched = g.node("URSAFrameSchedule", "URSA Frame Schedule", (2, 1), mode="image-to-video", frames=49,
                   start_time=1.0, start_tokens=start["tokens"])
    tokens = _sampler(g, loader, cond, (2, 0), frames=49, steps=50, schedule=sched["schedule"])["tokens"]
    _video_out(g, loader, tokens, "URSA_i2v", 3)


def wf_interpolation(g: Graph) -> None:
    loader, cond = _base(g, "a smooth, natural transition between the two frames, steady camera")
    start, end = _encode(g, loader, "Start", 1), _encode(g, loader, "End", 2)
    sched = g.node("URSAFrameSchedule", "URSA Frame Schedule", (2, 1), mode="interpolation", frames=49,
                   start_time=1.0, start_tokens=start["tokens"], end_tokens=end["tokens"])
    tokens = _sampler(g, loader, cond, (2, 0), frames=49, steps=50, schedule=sched["schedule"])["tokens"]
    _video_out(g, loader, tokens, "URSA_interpolation", 3)


def wf_long_video(g: Graph) -> None:
    loader, cond = _base(g, "a drone flight along a rocky coastline at golden hour, waves crashing, smooth motion")
    tokens = _sampler(g, loader, cond, (2, 0), frames=49, steps=50)["tokens"]
    longer = g.node("URSAExtendVideo", "URSA Extend Video", (3, 0), model=loader["model"],
                    conditioning=cond["conditioning"], tokens=tokens, windows=2, window_frames=49, overlap=4,
                    seed=43, steps=50, carry_start=0.9)
    saved = g.node("URSASaveTokens", "URSA Save Tokens", (3, 1), tokens=longer["tokens"],
                   filename_prefix="ursa_tokens/URSA_long")
    _video_out(g, loader, saved["tokens"], "URSA_long", 4)


def wf_upscale_chain(g: Graph) -> None:
    loader, cond = _base(g, "a hummingbird hovering at a red flower, macro shot, shallow depth of field")
    tokens = _sampler(g, loader, cond, (2, 0), frames=49, steps=50)["tokens"]
    _video_out(g, loader, tokens, "URSA_upscaled", 3, upscale=True)


WORKFLOWS = {"ursa_t2i": wf_t2i, "ursa_t2v": wf_t2v, "ursa_i2v": wf_i2v, "ursa_interpolation": wf_interpolation,
             "ursa_long_video": wf_long_video, "ursa_upscale_chain": wf_upscale_chain}


# ----------------------------------------------------------------------------------------------- main
def _dump(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def build(out_dir: Path) -> list[Path]:
    specs = load_specs()
    written = []
    (out_dir / "api").mkdir(parents=True, exist_ok=True)
    for name, describe in WORKFLOWS.items():
        graph = Graph(name, specs)
        describe(graph)
        for path, obj in ((out_dir / f"{name}.json", to_ui(graph)), (out_dir / "api" / f"{name}.json",
                                                                     to_api(graph))):
            path.write_text(_dump(obj), encoding="utf-8")
            written.append(path)
    return written


def check(committed: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        build(fresh)
        expected = sorted(p.relative_to(fresh) for p in fresh.rglob("*.json"))
        present = sorted(p.relative_to(committed) for p in committed.rglob("*.json")) if committed.is_dir() else []
        problems = [f"missing: {p}" for p in expected if p not in present]
        problems += [f"not generated by this script: {p}" for p in present if p not in expected]
        for rel in expected:
            if rel in present:
                a = (committed / rel).read_text(encoding="utf-8")
                b = (fresh / rel).read_text(encoding="utf-8")
                if a != b:
                    diff = difflib.unified_diff(a.splitlines(), b.splitlines(), f"committed/{rel}", f"fresh/{rel}",
                                                lineterm="", n=1)
                    problems.append(f"differs: {rel}\n" + "\n".join(list(diff)[:40]))
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("workflows are stale: run python scripts/make_workflows.py", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "workflows")
    p.add_argument("--check", action="store_true", help="compare a fresh build with --out; exit 1 on difference")
    p.add_argument("--dump-core", metavar="SERVER", help="refresh tests/data/core_nodes_0.8.0.json from a server")
    args = p.parse_args(argv)
    if args.dump_core:
        dump_core(args.dump_core)
        return 0
    if args.check:
        return check(args.out)
    for path in build(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
