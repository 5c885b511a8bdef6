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
SCHEDULE_PREVIEW = 260  # the Frame Schedule's diagram: a wide, short image the frontend gives a little more
VIDEO_PREVIEW = 220     # video preview under SaveVideo: an 8:5 clip (512x320, the templates' size) at node width
VIDEO_SQUARE_GROWTH = 90  # the frontend grows SaveVideo to its clip's aspect: room left below it in its group
                          # so that a 1:1 clip stays inside
NODE_TEXT = 50          # core's progress text under the widgets once a node ran (two lines; one line takes 22)
GROUP_PADDING = 10      # group rectangle around its nodes
GROUP_TITLE = 34        # LGraphGroup title bar (font 24)
GAP_X, GAP_Y = 50, 70   # between grid cells; > 2 * padding (+ group title) so groups never touch
STACK_GAP = 24          # between nodes stacked in one cell (one group: no group title between them)
VIEW = (1280, 800)      # the canvas the saved view must show in full
# Frontend chrome drawn over the canvas (1.35.9, default settings, measured in Chromium at 1280x800): side bar
# (left, 58 px), tabs + workflow name + Run bar (top, ~92 px), and in the bottom right corner the minimap and the
# zoom controls (from x=1024, y=545); the right edge above them is free.
VIEW_MARGINS = {"left": 70, "top": 100, "right": 12, "bottom": 12}
VIEW_BLOCKED = [(1015, 535, 265, 265)]  # screen rectangles [x, y, w, h] nothing may lie under
MIN_SCALE = 0.6         # below ~0.57 (8 px text at DPR 1) the frontend draws grey boxes without text


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
    tall as its tallest cell (titles included), so no two nodes overlap whatever their sizes.

    A cell is (column, row) or (column, row, rows) for one that spans `rows` rows (the last one grows if needed).
    Nodes given the same cell are stacked top to bottom in the order given, STACK_GAP apart: one group's nodes."""
    stacks: dict[tuple[int, int], list[int]] = {}
    spans: dict[tuple[int, int], int] = {}
    for nid, cell in cells.items():
        stacks.setdefault(tuple(cell[:2]), []).append(nid)
        spans[tuple(cell[:2])] = max(spans.get(tuple(cell[:2]), 1), cell[2] if len(cell) > 2 else 1)

    def height(ids: list[int]) -> int:
        return sum(sizes[i][1] + TITLE_HEIGHT for i in ids) + STACK_GAP * (len(ids) - 1)
    col_w = {c: max(sizes[i][0] for (cc, _), ids in stacks.items() if cc == c for i in ids) for c, _ in stacks}
    rows = range(min(r for _, r in stacks), max(r + spans[(c, r)] for c, r in stacks))
    row_h = {r: max((height(ids) for (_, rr), ids in stacks.items() if rr == r and spans[(_, rr)] == 1),
                    default=0) for r in rows}
    for (c, r), ids in sorted(stacks.items(), key=lambda item: item[0][1] + spans[item[0]]):
        last = r + spans[(c, r)] - 1
        short = height(ids) - (sum(row_h[i] for i in range(r, last + 1)) + GAP_Y * (last - r))
        row_h[last] += max(0, short)
    col_x, x = {}, origin[0]
    for c in range(min(col_w), max(col_w) + 1):
        col_x[c] = x
        x += col_w[c] + GAP_X if c in col_w else 0
    row_y, y = {}, origin[1]
    for r in rows:
        row_y[r] = y
        y += row_h[r] + GAP_Y
    positions = {}
    for (c, r), ids in stacks.items():
        y = row_y[r]
        for nid in ids:
            positions[nid] = (col_x[c], y + TITLE_HEIGHT)
            y += sizes[nid][1] + TITLE_HEIGHT + STACK_GAP
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


def _free_area(view, margins) -> tuple[float, float, float, float]:
    return margins["left"], margins["top"], view[0] - margins["right"], view[1] - margins["bottom"]


def _screen_problem(rect, ds: dict, view, margins, blocked) -> str | None:
    x, y, w, h = to_screen(rect, ds)
    left, top, right, bottom = _free_area(view, margins)
    if x < left - 0.5 or y < top - 0.5 or x + w > right + 0.5 or y + h > bottom + 0.5:
        return f"outside the initial {view[0]}x{view[1]} view (screen [{x:.0f}, {y:.0f}, {x + w:.0f}, {y + h:.0f}])"
    if any(overlaps((x, y, w, h), b) for b in blocked):
        return f"under the minimap or zoom controls (screen [{x:.0f}, {y:.0f}, {x + w:.0f}, {y + h:.0f}])"
    return None


def fit_view(rects: list[tuple], view=VIEW, margins=VIEW_MARGINS, blocked=VIEW_BLOCKED, backgrounds=()) -> dict:
    """``extra.ds`` (LiteGraph DragAndScale: screen = (canvas + offset) * scale) showing every rect in the free part
    of the view at the largest scale, never above 1: `rects` (nodes) not under the `blocked` screen rectangles,
    `backgrounds` (groups) inside the margins only. The graph's top left corner sits at the free area's top left."""
    everything = list(rects) + list(backgrounds)
    x0 = min(r[0] for r in everything)
    y0 = min(r[1] for r in everything)
    x1 = max(r[0] + r[2] for r in everything)
    y1 = max(r[1] + r[3] for r in everything)
    left, top, right, bottom = _free_area(view, margins)
    scale = min(1.0, (right - left) / (x1 - x0), (bottom - top) / (y1 - y0))
    scale = int(scale * 1000) / 1000  # round down: the fit only gets looser
    while True:
        ds = {"scale": scale, "offset": [round(left / scale - x0 + 0.05, 1), round(top / scale - y0 + 0.05, 1)]}
        if scale <= 0.1 or not (any(_screen_problem(r, ds, view, margins, blocked) for r in rects)
                                or any(_screen_problem(r, ds, view, margins, []) for r in backgrounds)):
            return ds
        scale = round(scale - 0.001, 3)


def to_screen(rect, ds: dict) -> tuple[float, float, float, float]:
    s, (ox, oy) = ds["scale"], ds["offset"]
    return ((rect[0] + ox) * s, (rect[1] + oy) * s, rect[2] * s, rect[3] * s)


def layout_problems(nodes: list[dict], groups: list[dict], ds: dict, view=VIEW, margins=VIEW_MARGINS,
                    blocked=VIEW_BLOCKED) -> list[str]:
    """Overlapping nodes or groups, nodes outside their group or inside another, anything outside the saved view or
    under the frontend's panels, a view zoomed out below MIN_SCALE.
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
    # A group may reach under the minimap (its empty lower part, left for a growing video player); a node may not.
    for what, r, under in [(f"node {titles[n]!r}", rects[n], blocked) for n in ids] + \
                          [(f"group {g['title']!r}", g["bounding"], []) for g in groups]:
        where = _screen_problem(r, ds, view, margins, under)
        if where:
            problems.append(f"{what} is {where}")
    if ds["scale"] < MIN_SCALE:
        problems.append(f"opens at zoom {ds['scale']:.3f}, below {MIN_SCALE} where the frontend draws no text")
    return problems
