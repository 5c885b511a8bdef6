#!/usr/bin/env python3
"""Write the example workflows, each described ONCE below, in both ComfyUI formats:

* ``workflows/<Title>.json``: UI format (workflow_json 0.4) for the template browser and drag & drop. The
  frontend (1.35.9) titles a custom-node template by its file name, so the file name IS the human title; the
  same-name ``.jpg`` beside it is the thumbnail (``scripts/make_thumbnails.py``);
* ``workflows/api/<id>.json``: API format for ``POST /prompt`` / ``scripts/comfy_queue.py``.

Widget lists come from ``scripts/node_schemas.json``, a trimmed ``/object_info`` of the URSA nodes and the core nodes
used (refresh: ``--dump-schemas URL`` from a running ComfyUI, or ``tests/refresh_node_schemas.py``; the test suite
fails when the snapshot differs from the node classes). Nodes are laid out from their frontend sizes on a
(column, row) grid, in groups, with a saved view that shows the whole graph (``workflow_layout.py``).

    python scripts/make_workflows.py            # (re)write workflows/
    python scripts/make_workflows.py --check    # exit 1 on drift from a fresh build, overlap or off-view nodes
    python scripts/make_workflows.py --dump-schemas http://127.0.0.1:8188   # refresh node_schemas.json
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workflow_layout as layout  # noqa: E402  (stdlib-only sibling)

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "workflows"
SCHEMAS_FILE = ROOT / "scripts" / "node_schemas.json"
CORE_NODES_USED = ["LoadImage", "SaveImage", "CreateVideo", "SaveVideo", "ImageScaleBy", "ImageFlip", "LoadImageMask",
                   "LoadVideo", "GetVideoComponents", "ImageFromBatch", "SolidMask", "MaskComposite"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# "ursa_modes": the modes in which the Frame Schedule shows an input (web/js/ursa.js hides it in the others).
KEPT_OPTIONS = ("default", "control_after_generate", "image_upload", "video_upload", "forceInput", "multiline",
                "ursa_modes")
# Room nodes take under their widgets once run: media (the sampler: its live token preview, sent with progress;
# the frame and mask schedules: their diagrams) and core's progress text (the sampler's clip size, the saved token
# file).
PREVIEW_NODES = {"LoadImage": layout.IMAGE_PREVIEW, "SaveImage": layout.IMAGE_PREVIEW,
                 "SaveVideo": layout.VIDEO_PREVIEW, "URSASampler": layout.IMAGE_PREVIEW + layout.NODE_TEXT,
                 "URSAFrameSchedule": layout.SCHEDULE_PREVIEW, "URSASaveTokens": layout.NODE_TEXT,
                 "URSAMaskSchedule": layout.IMAGE_PREVIEW, "LoadImageMask": layout.IMAGE_PREVIEW,
                 "LoadVideo": layout.VIDEO_PREVIEW, "URSAModelLoader": layout.NODE_TEXT}
# Room kept free below a node inside its group, for what it grows into after a run (not part of its saved size).
GROWTH = {"SaveVideo": layout.VIDEO_SQUARE_GROWTH}
NOTE_TYPE, NOTE_SIZE, NARROW_NOTE_SIZE = "MarkdownNote", (400, 250), (280, 250)

MODEL_NAME = "URSA-1.7B-FSQ320"
IMAGE_MODEL_NAME = "URSA-1.7B-IBQ1024"  # the image checkpoint (16 px tokens, 1024 x 1024)
NEGATIVE = "worst quality, low quality, inconsistent motion, static, still, blurry, jittery, distorted, ugly"


def model_note(name: str = MODEL_NAME) -> str:
    return (f"**Model** (once, about 7 GB): put the whole folder of "
            f"[BAAI/{name}](https://huggingface.co/BAAI/{name}) in `ComfyUI/models/ursa/`:\n\n"
            f"`python -m ursa_core download BAAI/{name} --dir ComfyUI/models/ursa`\n\n"
            f"(run in `custom_nodes/ursa-video`), or `hf download BAAI/{name} --local-dir "
            f"ComfyUI/models/ursa/{name}`; then press **R** so the loader lists it.")


# ----------------------------------------------------------------------------------------------- node specs
def trim_info(info: dict) -> dict:
    """The part of an ``/object_info`` entry that the workflows need (the snapshot format)."""
    sections = {}
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            io_type = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = (spec[1] if len(spec) > 1 else {}) or {}
            sections.setdefault(section, {})[name] = [io_type, {k: opts[k] for k in KEPT_OPTIONS if k in opts}]
    return {"input": sections, "output": list(info.get("output", [])),
            "output_name": list(info.get("output_name") or info.get("output", []))}


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
                # Seeds change after each run, as core's samplers do by default, so a second Run is not a cache hit.
                extra = ("randomize" if opts.get("control_after_generate") else
                         "image" if opts.get("image_upload") or opts.get("video_upload") else None)
                entry.update(default=opts.get("default"), frontend_extra=extra, multiline=bool(opts.get("multiline")),
                             modes=opts.get("ursa_modes"))
            inputs.append(entry)
    names = info.get("output_name") or info.get("output", [])
    outputs = [{"name": n, "type": t} for n, t in zip(names, info.get("output", []))]
    return {"inputs": inputs, "outputs": outputs}


def load_specs(path: Path = SCHEMAS_FILE) -> dict[str, dict]:
    return {name: normalize_info(info) for name, info in json.loads(path.read_text(encoding="utf-8")).items()}


def write_text_atomic(path: Path, text: str) -> None:
    """Temp file in the target folder, renamed into place: an interrupted run leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600); the committed files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_schemas(infos: dict[str, dict], path: Path = SCHEMAS_FILE) -> None:
    write_text_atomic(path, json.dumps({k: trim_info(infos[k]) for k in sorted(infos)}, indent=1) + "\n")


def dump_schemas(server: str) -> None:
    """Refresh the snapshot from a real server's /object_info: every URSA node and the core nodes used."""
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        info = json.load(r)
    wanted = {k: v for k, v in info.items() if k.startswith("URSA") or k in CORE_NODES_USED}
    missing = [k for k in CORE_NODES_USED if k not in wanted]
    if missing:
        raise SystemExit(f"{server} has no {missing}")
    write_schemas(wanted)
    print(f"wrote {SCHEMAS_FILE} ({len(wanted)} nodes)")


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
    cell: tuple
    values: dict
    spec: dict

    def shown_inputs(self) -> list[dict]:
        """The inputs the frontend draws: without those the node's mode does not read (web/js/ursa.js)."""
        mode = self.values.get("mode", next((i["default"] for i in self.spec["inputs"] if i["name"] == "mode"), None))
        return [i for i in self.spec["inputs"] if not i.get("modes") or mode in i["modes"]]

    def __getitem__(self, name: str) -> Out:
        names = [o["name"] for o in self.spec["outputs"]]
        if name not in names:
            raise KeyError(f"{self.type} has no output {name!r}; outputs: {names}")
        return Out(self, names.index(name))


@dataclass
class Graph:
    name: str
    specs: dict
    nodes: list = field(default_factory=list)
    groups: list = field(default_factory=list)  # (title, [nodes])
    note: str = ""
    note_cell: tuple = (1, 1)  # an empty grid cell for the read-me note (under the prompt by default)
    note_size: tuple = NOTE_SIZE
    note_before: "Node | None" = None  # in a stacked cell: the node the note goes above (default: at the bottom)

    def node(self, type_: str, title: str, cell: tuple, **values) -> Node:
        """A node at grid ``cell`` = (column, row) or (column, row, rows it spans); nodes given one cell stack top to
        bottom (one group's). Data flows left to right, and down; columns and rows size to fit."""
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
        node = Node(len(self.nodes) + 1, type_, title, cell, values, spec)
        self.nodes.append(node)
        return node

    def group(self, title: str, *nodes: Node) -> None:
        self.groups.append((title, list(nodes)))


# ----------------------------------------------------------------------------------------------- writers
def _links(graph: Graph) -> list[list]:
    links = []
    for node in graph.nodes:
        for inp in node.spec["inputs"]:
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
    """The frontend's widget order: each widget's value, a seed's control value right after it, and the upload
    button of an image/video combo after every declared widget (the frontend appends it as a last input)."""
    values, uploads = [], []
    for inp in node.spec["inputs"]:
        if inp["widget"]:
            value = node.values.get(inp["name"], inp["default"])
            values.append(inp["default"] if isinstance(value, Out) else value)
            if inp["frontend_extra"]:
                (uploads if inp["frontend_extra"] == "image" else values).append(inp["frontend_extra"])
    return values + uploads


def _ui_node(node: Node, links: list, order: int, pos, size) -> dict:
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
    return {"id": node.id, "type": node.type, "title": node.title, "pos": list(pos), "size": list(size),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": node.type}, "widgets_values": _widget_values(node)}


def _note_node(graph: Graph, node_id: int, pos) -> dict:
    return {"id": node_id, "type": NOTE_TYPE, "title": "Read me", "pos": list(pos), "size": list(graph.note_size),
            "flags": {}, "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [graph.note], "color": "#432", "bgcolor": "#653"}


def to_ui(graph: Graph) -> dict:
    """UI format: nodes on their grid cells, the read-me note in ``graph.note_cell``, groups, a fitted view."""
    links, order = _links(graph), _order(graph)
    note_id = len(graph.nodes) + 1
    sizes = {n.id: layout.node_size(n.title, n.shown_inputs(), n.spec["outputs"], PREVIEW_NODES.get(n.type, 0))
             for n in graph.nodes}
    sizes[note_id] = graph.note_size
    cells = {}
    for n in graph.nodes:
        if n is graph.note_before:
            cells[note_id] = graph.note_cell
        cells[n.id] = n.cell
    cells.setdefault(note_id, graph.note_cell)
    room = {nid: (w, h + GROWTH.get(n.type, 0)) for n in graph.nodes for nid, (w, h) in [(n.id, sizes[n.id])]}
    positions = layout.grid_positions(cells, {**sizes, **room})
    ui_nodes = [_ui_node(n, links, order[n.id], positions[n.id], sizes[n.id]) for n in graph.nodes]
    ui_nodes.append(_note_node(graph, note_id, positions[note_id]))
    groups = []
    for i, (title, members) in enumerate(graph.groups):
        rects = [layout.node_rect(positions[m.id], room[m.id]) for m in members]
        groups.append({"id": i + 1, "title": title, "bounding": layout.group_bounding(rects), "color": "#3f789e",
                       "font_size": 24, "flags": {}})
    ui_links = []
    for lk in links:
        dst = next(n for n in ui_nodes if n["id"] == lk[3])
        to_slot = [i["name"] for i in dst["inputs"]].index(lk[4])
        ui_links.append([lk[0], lk[1], lk[2], lk[3], to_slot, lk[5]])
    view = layout.fit_view([layout.node_rect(n["pos"], n["size"]) for n in ui_nodes], backgrounds=[
        g["bounding"] for g in groups])
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes, "links": ui_links,
            "groups": groups, "config": {}, "extra": {"ds": view}, "version": 0.4}


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
def _base(g: Graph, prompt: str, negative: str = NEGATIVE, model: str = MODEL_NAME, group: bool = True
          ) -> tuple[Node, Node]:
    """Loader and prompt on top of columns 0 and 1, in a group of their own unless the caller groups them."""
    loader = g.node("URSAModelLoader", "URSA Loader", (0, 0), model_name=model, dtype="auto")
    cond = g.node("URSATextEncode", "URSA Prompt", (1, 0), model=loader["model"], prompt=prompt,
                  negative_prompt=negative, motion_score=9.0)
    if group:
        g.group("Model and prompt", loader, cond)
    return loader, cond


def _sampler(g: Graph, model: Node, cond, cell, frames, steps, **extra) -> Node:
    return g.node("URSASampler", "URSA Sampler", cell, model=model["model"], conditioning=cond["conditioning"],
                  seed=42, steps=steps, frames=frames, width=512, height=320, **extra)


def _video_out(g: Graph, loader: Node, tokens: Out, prefix: str, cell: tuple, upscale: bool = False) -> None:
    """Decode -> (2x upscale) -> video -> save, stacked top to bottom in ``cell``."""
    decode = g.node("URSATokenizerDecode", "URSA Decode", cell, vq=loader["vq"], tokens=tokens)
    members, images = [decode], decode["images"]
    if upscale:
        scaled = g.node("ImageScaleBy", "Upscale 2x", cell, image=images, upscale_method="bicubic", scale_by=2.0)
        members.append(scaled)
        images = scaled["IMAGE"]
    video = g.node("CreateVideo", "Create Video", cell, images=images, fps=decode["fps"])
    save = g.node("SaveVideo", "Save Video", cell, video=video["VIDEO"], filename_prefix=f"video/{prefix}",
                  format="auto", codec="auto")
    g.group("Decode and save", *members, video, save)


def _encode(g: Graph, loader, which: str, image: Out, cell: tuple) -> Node:
    return g.node("URSATokenizerEncode", f"URSA Encode {which}", cell, vq=loader["vq"], image=image, width=512,
                  height=320, resize_mode="crop")


def _image_out(g: Graph, loader: Node, tokens: Out, prefix: str) -> None:
    """Decode -> save, stacked in the column after the sampler's."""
    decode = g.node("URSATokenizerDecode", "URSA Decode", (3, 0, 2), vq=loader["vq"], tokens=tokens)
    save = g.node("SaveImage", "Save Image", (3, 0, 2), images=decode["images"], filename_prefix=f"URSA/{prefix}")
    g.group("Decode and save", decode, save)


def wf_t2i(g: Graph) -> None:
    loader, cond = _base(g, "a red fox sitting in fresh snow at sunrise, soft golden light, highly detailed",
                         negative="")
    sampler = _sampler(g, loader, cond, (2, 0, 2), frames=1, steps=25)
    g.group("Generate", sampler)
    _image_out(g, loader, sampler["tokens"], "t2i")


LORA_NAME = "my_style/adapter_model.safetensors"
LORA_NOTE = ("**LoRA**: put it in `ComfyUI/models/loras/`: a PEFT adapter as its folder (`adapter_config.json` + "
             "`adapter_model.safetensors` or `.bin`, e.g. `models/loras/my_style/`, then pick "
             f"`{LORA_NAME}`), or a single LoRA file (`lora_down`/`lora_up` + `alpha`). Press **R** so the URSA LoRA "
             "Loader lists it. Chain more loaders to stack LoRAs; strength 0 turns one off without reloading.")


def wf_t2i_lora(g: Graph) -> None:
    loader = g.node("URSAModelLoader", "URSA Loader", (0, 0), model_name=MODEL_NAME, dtype="auto")
    lora = g.node("URSALoraLoader", "URSA LoRA", (0, 0), model=loader["model"], lora_name=LORA_NAME, strength=0.8)
    cond = g.node("URSATextEncode", "URSA Prompt", (1, 0), model=lora["model"],
                  prompt="a red fox sitting in fresh snow at sunrise, in my style", negative_prompt="",
                  motion_score=9.0)
    g.group("Model, LoRA and prompt", loader, lora, cond)
    sampler = _sampler(g, lora, cond, (2, 0, 2), frames=1, steps=25)
    g.group("Generate", sampler)
    _image_out(g, loader, sampler["tokens"], "t2i_lora")


def wf_t2v(g: Graph) -> None:
    loader, cond = _base(g, "a red fox trotting through fresh snow in a pine forest, camera tracking, cinematic")
    sampler = _sampler(g, loader, cond, (2, 0, 2), frames=49, steps=50)
    g.group("Generate", sampler)
    _video_out(g, loader, sampler["tokens"], "URSA_t2v", (3, 0, 2))


def wf_i2v(g: Graph) -> None:
    loader, cond = _base(g, "the scene comes alive: gentle wind, drifting clouds, the camera slowly pushes in")
    image = g.node("LoadImage", "Start Image", (0, 1), image="example.png")
    start = _encode(g, loader, "Start", image["IMAGE"], (1, 1))
    sched = g.node("URSAFrameSchedule", "URSA Frame Schedule", (2, 1), mode="image-to-video", frames=49,
                   start_time=1.0, start_tokens=start["tokens"])
    g.group("Start frame", image, start, sched)
    sampler = _sampler(g, loader, cond, (3, 0, 2), frames=49, steps=50, schedule=sched["schedule"])
    g.group("Generate", sampler)
    _video_out(g, loader, sampler["tokens"], "URSA_i2v", (4, 0, 2))
    g.note_cell, g.note_size = (2, 0), NARROW_NOTE_SIZE


def wf_interpolation(g: Graph) -> None:
    """One Load Image for both ends, the end frame its mirror image (core's Image Flip): a template that runs as
    shipped with two different frames (ComfyUI ships one example image); the note says how to use your own."""
    loader, cond = _base(g, "a smooth, natural transition between the two frames, steady camera")
    image = g.node("LoadImage", "Start Image", (0, 1), image="example.png")
    start = _encode(g, loader, "Start", image["IMAGE"], (1, 1))
    mirrored = g.node("ImageFlip", "End Frame (start mirrored)", (1, 1), image=image["IMAGE"],
                      flip_method="y-axis: horizontally")
    end = _encode(g, loader, "End", mirrored["IMAGE"], (1, 1))
    sched = g.node("URSAFrameSchedule", "URSA Frame Schedule", (2, 1), mode="interpolation", frames=49,
                   start_time=1.0, start_tokens=start["tokens"], end_tokens=end["tokens"])
    g.group("First and last frames", image, start, mirrored, end, sched)
    sampler = _sampler(g, loader, cond, (3, 0, 2), frames=49, steps=50, schedule=sched["schedule"])
    g.group("Generate", sampler)
    _video_out(g, loader, sampler["tokens"], "URSA_interpolation", (4, 0, 2))
    g.note_cell, g.note_size = (2, 0), NARROW_NOTE_SIZE


def wf_long_video(g: Graph) -> None:
    loader, cond = _base(g, "a drone flight along a rocky coastline at golden hour, waves crashing, smooth motion")
    sampler = _sampler(g, loader, cond, (2, 0, 2), frames=49, steps=50)
    longer = g.node("URSAExtendVideo", "URSA Extend Video", (3, 0), model=loader["model"],
                    conditioning=cond["conditioning"], tokens=sampler["tokens"], windows=2, window_frames=49,
                    overlap=4, seed=43, steps=50, carry_start=0.9)
    g.group("Generate and extend", sampler, longer)
    # Saved before the decode (its output feeds the decode): a failed decode loses no sampling.
    saved = g.node("URSASaveTokens", "URSA Save Tokens", (0, 1), tokens=longer["tokens"],
                   filename_prefix="ursa_tokens/URSA_long")
    decode = g.node("URSATokenizerDecode", "URSA Decode", (0, 1), vq=loader["vq"], tokens=saved["tokens"])
    video = g.node("CreateVideo", "Create Video", (0, 1), images=decode["images"], fps=decode["fps"])
    save = g.node("SaveVideo", "Save Video", (1, 1), video=video["VIDEO"], filename_prefix="video/URSA_long",
                  format="auto", codec="auto")
    g.group("Save tokens, decode and save", saved, decode, video, save)
    g.note_cell, g.note_size = (4, 0), NARROW_NOTE_SIZE


def wf_t2v_two_gpus(g: Graph) -> None:
    loader, cond = _base(g, "a red fox trotting through fresh snow in a pine forest, camera tracking, cinematic")
    devices = g.node("URSADevices", "URSA Devices", (0, 1), model=loader["model"], devices="cuda:0, cuda:1",
                     strategy="auto")
    g.group("Two GPUs", devices)
    sampler = g.node("URSASampler", "URSA Sampler", (2, 0, 2), model=devices["model"],
                     conditioning=cond["conditioning"], seed=42, steps=50, frames=49, width=512, height=320)
    g.group("Generate", sampler)
    _video_out(g, loader, sampler["tokens"], "URSA_t2v_two_gpus", (3, 0, 2))


def wf_upscale_chain(g: Graph) -> None:
    loader, cond = _base(g, "a hummingbird hovering at a red flower, macro shot, shallow depth of field")
    sampler = _sampler(g, loader, cond, (2, 0, 2), frames=49, steps=50)
    g.group("Generate", sampler)
    _video_out(g, loader, sampler["tokens"], "URSA_upscaled", (3, 0, 2), upscale=True)


# Paint with a mask (issue 18): five columns of stacked nodes in two groups of whole columns (inputs, then repaint
# and save); data flows left to right and down a column.
def _repaint_tail(g: Graph, loader: Node, cond: Node, canvas: Out, mask: Out, frames: int, size: tuple[int, int],
                  steps: int, strength: float = 1.0, grow: int = 1) -> tuple[Node, Node, Node]:
    """The Mask Schedule and the decode in column 2, the sampler in column 3 (the schedule's tokens set the clip it
    makes; its widgets say the same for readers)."""
    masked = g.node("URSAMaskSchedule", "URSA Mask Schedule", (2, 0), source_tokens=canvas, mask=mask,
                    strength=strength, grow=grow)
    sampler = g.node("URSASampler", "URSA Sampler", (3, 0), model=loader["model"], conditioning=cond["conditioning"],
                     seed=42, steps=steps, frames=frames, width=size[0], height=size[1], schedule=masked["schedule"])
    decode = g.node("URSATokenizerDecode", "URSA Decode", (2, 0), vq=loader["vq"], tokens=sampler["tokens"])
    return masked, sampler, decode


def _composite(g: Graph, source: Out, decode: Node, masked: Node) -> Node:
    return g.node("URSARepaintComposite", "URSA Repaint Composite", (2, 0), source=source,
                  repainted=decode["images"], schedule=masked["schedule"], feather=16)


def wf_inpaint_image(g: Graph) -> None:
    loader, cond = _base(g, "a small red fox curled up asleep", negative="", model=IMAGE_MODEL_NAME, group=False)
    image = g.node("LoadImage", "Image and Mask", (0, 0), image="example.png")
    encode = g.node("URSATokenizerEncode", "URSA Encode Image", (2, 0), vq=loader["vq"], image=image["IMAGE"],
                    width=1024, height=1024, resize_mode="crop")
    masked, sampler, decode = _repaint_tail(g, loader, cond, encode["tokens"], image["MASK"], 1, (1024, 1024), 25)
    pasted = _composite(g, image["IMAGE"], decode, masked)
    save = g.node("SaveImage", "Save Image", (4, 0), images=pasted["image"], filename_prefix="URSA/inpaint")
    g.note_cell = (1, 0)
    g.group("Model, prompt and picture", loader, cond, image)
    g.group("Repaint and save", encode, masked, sampler, decode, pasted, save)


def wf_outpaint_image(g: Graph) -> None:
    loader, cond = _base(g, "a wide landscape that continues the picture naturally", negative="", group=False)
    image = g.node("LoadImage", "Image", (0, 0), image="example.png")
    padded = g.node("URSAPadForOutpaint", "URSA Pad for Outpaint", (0, 0), image=image["IMAGE"], left=128, top=0,
                    right=128, bottom=0, fill="edge")
    encode = g.node("URSATokenizerEncode", "URSA Encode Canvas", (2, 0), vq=loader["vq"], image=padded["image"],
                    width=512, height=320, resize_mode="crop")
    masked, sampler, decode = _repaint_tail(g, loader, cond, encode["tokens"], padded["mask"], 1, (512, 320), 25)
    pasted = _composite(g, padded["image"], decode, masked)
    save = g.node("SaveImage", "Save Image", (4, 0), images=pasted["image"], filename_prefix="URSA/outpaint")
    g.note_cell = (1, 0)
    g.group("Model, prompt and canvas", loader, cond, image, padded)
    g.group("Repaint and save", encode, masked, sampler, decode, pasted, save)


def _video_save(g: Graph, images: Out, fps: Out, prefix: str) -> tuple[Node, Node]:
    video = g.node("CreateVideo", "Create Video", (4, 0), images=images, fps=fps)
    save = g.node("SaveVideo", "Save Video", (4, 0), video=video["VIDEO"], filename_prefix=f"video/{prefix}",
                  format="auto", codec="auto")
    return video, save


def wf_inpaint_video(g: Graph) -> None:
    loader, cond = _base(g, "an empty street, nothing in the way, natural motion", group=False)
    clip = g.node("LoadVideo", "Video", (0, 0), file="example.mp4")
    parts = g.node("GetVideoComponents", "Video Frames", (0, 0), video=clip["VIDEO"])
    first = g.node("ImageFromBatch", "First 49 Frames", (0, 0), image=parts["images"], batch_index=0, length=49)
    mask = g.node("LoadImageMask", "Mask (white = repaint)", (1, 0), image="example_mask.png", channel="red")
    encode = g.node("URSATokenizerEncode", "URSA Encode Video", (2, 0), vq=loader["vq"], image=first["IMAGE"],
                    width=512, height=320, resize_mode="crop")
    masked, sampler, decode = _repaint_tail(g, loader, cond, encode["tokens"], mask["MASK"], 49, (512, 320), 50)
    pasted = _composite(g, first["IMAGE"], decode, masked)
    video, save = _video_save(g, pasted["image"], decode["fps"], "URSA_inpaint")
    g.note_cell, g.note_before = (1, 0), mask
    g.group("Model, prompt, video and mask", loader, cond, clip, parts, first, mask)
    g.group("Repaint and save", encode, masked, sampler, decode, pasted, video, save)


def wf_reroll_region(g: Graph) -> None:
    loader, cond = _base(g, "the same scene, a different bird flying through", group=False)
    tokens = g.node("URSALoadTokens", "Clip Tokens", (0, 0), token_file="example.safetensors")
    canvas = g.node("SolidMask", "Canvas (keep)", (0, 0), value=0.0, width=512, height=320)
    region = g.node("SolidMask", "Region (repaint)", (0, 0), value=1.0, width=192, height=128)
    mask = g.node("MaskComposite", "Place Region", (1, 0), destination=canvas["MASK"], source=region["MASK"], x=160,
                  y=96, operation="add")
    masked, sampler, decode = _repaint_tail(g, loader, cond, tokens["tokens"], mask["MASK"], 49, (512, 320), 50,
                                            strength=0.5, grow=0)
    video, save = _video_save(g, decode["images"], decode["fps"], "URSA_reroll")
    g.note_cell, g.note_before = (1, 0), mask
    g.group("Model, prompt, clip and region", loader, cond, tokens, canvas, region, mask)
    g.group("Re-roll and save", masked, sampler, decode, video, save)


@dataclass(frozen=True)
class Template:
    id: str            # API file name and CLI handle
    title: str         # UI file name = the title the template browser shows
    description: str   # first lines of the read-me note
    build: Callable[[Graph], None]
    model: str = MODEL_NAME  # the checkpoint folder its loader names (and its read-me note downloads)
    extra_note: str = ""   # after the model note (where other files go)


TEMPLATES = [
    Template("ursa_t2i", "URSA Text to Image", "One 512x320 image from a prompt (25 steps).", wf_t2i),
    Template("ursa_t2v", "URSA Text to Video", "A 49-frame (4 s at 12 fps) 512x320 clip from a prompt.", wf_t2v),
    Template("ursa_i2v", "URSA Image to Video",
             "Animate a still: the loaded image is frame 0, the prompt describes the motion.", wf_i2v),
    Template("ursa_interpolation", "URSA Interpolation between two frames",
             "A clip that starts on the first image and ends on the second.", wf_interpolation),
    Template("ursa_long_video", "URSA Long Video (extend in windows)",
             "A clip extended window by window, each continuing the last frames of the one before; the tokens "
             "are saved so the video can be decoded again without sampling.", wf_long_video),
    Template("ursa_upscale_chain", "URSA Video then 2x Upscale",
             "A text-to-video clip, decoded and upscaled 2x with a core node before it is saved.", wf_upscale_chain),
    Template("ursa_inpaint_image", "URSA Inpaint an Image (IBQ)",
             "Repaint part of a picture with the 1024 x 1024 image model. Right-click the image > **Open in "
             "MaskEditor** and paint what to replace (white = repaint); the prompt says what goes there. Tokens "
             "outside the mask are kept exactly and the composite restores the original pixels beyond a 16 px "
             "feather.", wf_inpaint_image, IMAGE_MODEL_NAME),
    Template("ursa_outpaint_image", "URSA Outpaint an Image",
             "Extend a picture left and right: the pad node adds 128 px on each side (edge fill) with the matching "
             "mask; the picture is kept, the new area generated. Set the padding per side; the canvas is fit to "
             "512 x 320.", wf_outpaint_image),
    Template("ursa_inpaint_video", "URSA Inpaint a Video",
             "Repaint a region of a clip: the first 49 frames of the video (1 + 4k frames), one mask image for "
             "every frame (white = repaint; **red** channel of the mask file). The rest of every frame is kept "
             "token for token, and the composite keeps the original pixels beyond a 16 px feather.",
             wf_inpaint_video),
    Template("ursa_reroll_region", "URSA Re-roll a Region of a Clip",
             "Re-roll part of a clip you generated (tokens saved with URSA Save Tokens or `--save-tokens`) at "
             "strength 0.5: the region keeps its layout and colours and gets new detail; the rest is held. Move "
             "and size the region with the two masks (x, y, width, height).", wf_reroll_region),
    Template("ursa_t2i_lora", "URSA Text to Image with a LoRA",
             "One 512x320 image from a prompt, with a LoRA added to the model (strength 0.8).", wf_t2i_lora,
             extra_note=LORA_NOTE),
    Template("ursa_t2v_two_gpus", "URSA Text to Video on two GPUs",
             "Text to video with URSA Devices: each GPU holds a copy of the weights and every step's two guidance "
             "branches run at once, one per GPU (the same video as one GPU). Set the sampler's batch_size to 2 "
             "for two seeds at once, one per GPU. List other devices on URSA Devices to use other GPUs.",
             wf_t2v_two_gpus),
]


def describe(template: Template, specs: dict) -> Graph:
    graph = Graph(template.id, specs)
    template.build(graph)
    extra = f"{template.extra_note}\n\n" if template.extra_note else ""
    graph.note = (f"## {template.title}\n\n{template.description}\n\n{model_note(template.model)}\n\n{extra}"
                  f"Node help: select a node and press the **?** on it.")
    return graph


# ----------------------------------------------------------------------------------------------- main
def _dump(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def render(specs: dict | None = None) -> dict[str, str]:
    """Relative path -> file text of every generated file."""
    specs = specs or load_specs()
    files = {}
    for template in TEMPLATES:
        graph = describe(template, specs)
        files[f"{template.title}.json"] = _dump(to_ui(graph))
        files[f"api/{template.id}.json"] = _dump(to_api(graph))
    return files


def layout_report(files: dict[str, str]) -> list[str]:
    problems = []
    for rel, text in files.items():
        if not rel.startswith("api/"):
            wf = json.loads(text)
            problems += [f"{rel}: {p}" for p in layout.layout_problems(wf["nodes"], wf["groups"], wf["extra"]["ds"])]
    return problems


def check(committed: Path) -> int:
    fresh = render()
    present = {p.relative_to(committed).as_posix() for p in committed.rglob("*.json")} if committed.is_dir() else set()
    problems = [f"missing: {rel}" for rel in sorted(set(fresh) - present)]
    problems += [f"not generated by this script: {rel}" for rel in sorted(present - set(fresh))]
    for rel in sorted(set(fresh) & present):
        old = (committed / rel).read_text(encoding="utf-8")
        if old != fresh[rel]:
            diff = difflib.unified_diff(old.splitlines(), fresh[rel].splitlines(), f"committed/{rel}",
                                        f"fresh/{rel}", lineterm="", n=1)
            problems.append(f"differs: {rel}\n" + "\n".join(list(diff)[:40]))
    stale = bool(problems)
    problems += layout_report({rel: (committed / rel).read_text(encoding="utf-8") if rel in present else text
                               for rel, text in fresh.items()})
    for p in problems:
        print(p, file=sys.stderr)
    if stale:
        print("workflows are stale: run python scripts/make_workflows.py", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--check", action="store_true",
                   help="exit 1 if --out differs from a fresh build, or any node overlaps or lies outside the view")
    p.add_argument("--dump-schemas", metavar="SERVER", help="refresh scripts/node_schemas.json from a server")
    args = p.parse_args(argv)
    if args.dump_schemas:
        dump_schemas(args.dump_schemas)
        return 0
    if args.check:
        return check(args.out)
    files = render()
    problems = layout_report(files)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    for rel, text in files.items():
        path = args.out / rel
        write_text_atomic(path, text)
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
