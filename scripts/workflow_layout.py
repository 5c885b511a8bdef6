"""Canvas geometry of UI workflows, the way ComfyUI's frontend (LiteGraph, comfyui-frontend-package 1.35.9) draws it.

Stdlib only: used by ``make_workflows.py`` to place nodes and by the tests (``--check`` and the real-browser test)
to verify the result. Sizes follow ``LGraphNode.computeSize``: slot rows of ``SLOT_HEIGHT``, each widget
``WIDGET_HEIGHT + 4``, 8 px below the widgets and a 6 px margin. ``pos`` is the top-left corner of the node BODY;
the title bar (``TITLE_HEIGHT``) is drawn above it, so every rectangle here includes it.
"""
from __future__ import annotations

TITLE_HEIGHT = 30       # LiteGraph.NODE_TITLE_HEIGHT
SLOT_HEIGHT = 20        # LiteGraph.NODE_SLOT_HEIGHT
WIDGET_HEIGHT = 20      # LiteGraph.NODE_WIDGET_HEIGHT (+4 spacing per widget)
TEXT_WIDTH = 14 * 0.6   # frontend fallback width of one character (NODE_TEXT_SIZE * 0.6)
TEXTAREA_HEIGHT = 96    # multiline STRING (DOM textarea); its node minimum is 400 x 200 (useStringWidget.ts)
IMAGE_PREVIEW = 240     # image preview area (ImagePreviewWidget minHeight 220) under LoadImage/SaveImage
VIDEO_PREVIEW = 220     # video preview under SaveVideo (a 512x320 clip at node width; the tests use 8:5 clips too)
GROUP_PADDING = 10      # group rectangle around its nodes
GROUP_TITLE = 34        # LGraphGroup title bar (font 24)
GAP_X, GAP_Y = 50, 70   # between grid cells; > 2 * padding (+ group title) so groups never touch
STACK_GAP = 40          # between nodes stacked in one cell (one group: no group title between them)
VIEW = (1280, 800)      # the canvas the saved view must show in full
# Frontend chrome drawn over the canvas (1.35.9, default settings, measured in Chromium at 1280x800): side bar
# (left, 58 px), tabs + workflow name + Run bar (top, ~92 px), minimap and zoom controls (right column from x=1024).
VIEW_MARGINS = {"left": 70, "top": 100, "right": 265, "bottom": 12}


def _round10(v: float) -> int:
    return int(-(-v // 10) * 10)


def node_size(title: str, inputs: list[dict], outputs: list[dict], preview: int = 0) -> tuple[int, int]:
    """[width, height] of a node body. ``inputs`` are normalised specs (``widget``, ``multiline``, ``frontend_extra``
    as in make_workflows); ``preview`` adds a media area under the widgets (image/video outputs, LoadImage)."""
    sockets = [i for i in inputs if not i["widget"]]
    widgets = [i for i in inputs if i["widget"]]
    rows = max(len(sockets), len(outputs), 1)
    height = rows * SLOT_HEIGHT
    widget_rows = 0.0
    for w in widgets:
        widget_rows += (TEXTAREA_HEIGHT if w.get("multiline") else WIDGET_HEIGHT) + 4
        if w.get("frontend_extra"):  # control_after_generate combo / image upload button
            widget_rows += WIDGET_HEIGHT + 4
    if widgets:
        widget_rows += 8
    height += widget_rows + preview + 6
    slot_text = max((len(i["name"]) for i in sockets), default=0) + max((len(o["name"]) for o in outputs), default=0)
    label_text = max((len(w["name"]) + min(len(str(w.get("default") or "")), 24) for w in widgets), default=0)
    width = max(TITLE_HEIGHT * 1.33 + TEXT_WIDTH * len(title), TEXT_WIDTH * slot_text + 2 * SLOT_HEIGHT + 5,
                TEXT_WIDTH * label_text + 80, 140 * (1.5 if widgets else 1))
    if any(w.get("multiline") for w in widgets):
        width, height = max(width, 400), max(height, 200)
    return _round10(max(width, 280)), _round10(height)


def grid_positions(cells: dict[int, tuple], sizes: dict[int, tuple[int, int]],
                   origin: tuple[int, int] = (0, 0)) -> dict[int, tuple[int, int]]:
    """Body positions for nodes placed on a (column, row) grid: each column as wide as its widest node, each row as
    tall as its tallest cell (title included), so no two nodes overlap whatever their sizes. A cell may hold a stack:
    (column, row, k) puts the node k-th from the top of that cell, STACK_GAP below the one before (for nodes of one
    group: a gap between groups needs GAP_Y)."""
    stacks: dict[tuple[int, int], dict[int, int]] = {}
    for nid, cell in cells.items():
        stack = stacks.setdefault(tuple(cell[:2]), {})
        slot = cell[2] if len(cell) > 2 else 0
        if slot in stack:
            raise ValueError(f"nodes {stack[slot]} and {nid} share grid cell {cell}")
        stack[slot] = nid
    heights = {cell: sum(sizes[n][1] + TITLE_HEIGHT for n in stack.values()) + STACK_GAP * (len(stack) - 1)
               for cell, stack in stacks.items()}
    cols = sorted({c for c, _ in stacks})
    rows = sorted({r for _, r in stacks})
    col_w = {c: max(sizes[n][0] for (cc, _), stack in stacks.items() if cc == c for n in stack.values())
             for c in cols}
    row_h = {r: max(h for (_, rr), h in heights.items() if rr == r) for r in rows}
    col_x, x = {}, origin[0]
    for c in range(min(cols), max(cols) + 1):
        col_x[c] = x
        x += col_w.get(c, 0) + GAP_X if c in col_w else 0
    row_y, y = {}, origin[1]
    for r in range(min(rows), max(rows) + 1):
        row_y[r] = y
        y += row_h.get(r, 0) + GAP_Y if r in row_h else 0
    positions = {}
    for (c, r), stack in stacks.items():
        top = row_y[r]
        for slot in sorted(stack):
            positions[stack[slot]] = (col_x[c], top + TITLE_HEIGHT)
            top += sizes[stack[slot]][1] + TITLE_HEIGHT + STACK_GAP
    return positions


def node_rect(pos, size) -> tuple[float, float, float, float]:
    """[x, y, w, h] of a node on the canvas, title bar included."""
    return (pos[0], pos[1] - TITLE_HEIGHT, size[0], size[1] + TITLE_HEIGHT)


def group_bounding(rects: list[tuple]) -> list[int]:
    x0 = min(r[0] for r in rects) - GROUP_PADDING
    y0 = min(r[1] for r in rects) - GROUP_PADDING - GROUP_TITLE
    x1 = max(r[0] + r[2] for r in rects) + GROUP_PADDING
    y1 = max(r[1] + r[3] for r in rects) + GROUP_PADDING
    return [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]


def overlaps(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def contains(outer, inner) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def fit_view(rects: list[tuple], view=VIEW, margins=VIEW_MARGINS) -> dict:
    """``extra.ds`` (LiteGraph DragAndScale: screen = (canvas + offset) * scale) showing every rect in the free part
    of the view, centred, never zoomed in past 1."""
    x0 = min(r[0] for r in rects)
    y0 = min(r[1] for r in rects)
    x1 = max(r[0] + r[2] for r in rects)
    y1 = max(r[1] + r[3] for r in rects)
    free_w = view[0] - margins["left"] - margins["right"]
    free_h = view[1] - margins["top"] - margins["bottom"]
    scale = min(1.0, free_w / (x1 - x0), free_h / (y1 - y0))
    scale = int(scale * 1000) / 1000  # round down: the fit only gets looser
    off_x = (margins["left"] + (free_w - (x1 - x0) * scale) / 2) / scale - x0
    off_y = (margins["top"] + (free_h - (y1 - y0) * scale) / 2) / scale - y0
    return {"scale": scale, "offset": [round(off_x, 1), round(off_y, 1)]}


def to_screen(rect, ds: dict) -> tuple[float, float, float, float]:
    s, (ox, oy) = ds["scale"], ds["offset"]
    return ((rect[0] + ox) * s, (rect[1] + oy) * s, rect[2] * s, rect[3] * s)


def layout_problems(nodes: list[dict], groups: list[dict], ds: dict, view=VIEW, margins=VIEW_MARGINS) -> list[str]:
    """Overlapping nodes or groups, nodes outside their group or inside another, anything outside the saved view.
    ``nodes``: UI-format nodes (id, title, pos, size); ``groups``: UI-format groups (title, bounding)."""
    problems = []
    rects = {n["id"]: node_rect(n["pos"], n["size"]) for n in nodes}
    titles = {n["id"]: n.get("title") or n.get("type") for n in nodes}
    ids = list(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if overlaps(rects[a], rects[b]):
                problems.append(f"nodes overlap: {titles[a]!r} and {titles[b]!r}")
    for i, g in enumerate(groups):
        for h in groups[i + 1:]:
            if overlaps(g["bounding"], h["bounding"]):
                problems.append(f"groups overlap: {g['title']!r} and {h['title']!r}")
        for nid, r in rects.items():
            if overlaps(g["bounding"], r) and not contains(g["bounding"], r):
                problems.append(f"node {titles[nid]!r} sticks out of group {g['title']!r}")
    left, top = margins["left"], margins["top"]
    right, bottom = view[0] - margins["right"], view[1] - margins["bottom"]
    for what, r in [(f"node {titles[n]!r}", rects[n]) for n in ids] + [(f"group {g['title']!r}", g["bounding"])
                                                                      for g in groups]:
        x, y, w, h = to_screen(r, ds)
        if x < left - 0.5 or y < top - 0.5 or x + w > right + 0.5 or y + h > bottom + 0.5:
            problems.append(f"{what} is outside the initial {view[0]}x{view[1]} view "
                            f"(screen [{x:.0f}, {y:.0f}, {x + w:.0f}, {y + h:.0f}])")
    return problems
