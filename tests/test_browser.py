"""Opt-in: the shipped workflows in ComfyUI's REAL frontend, in a real Chromium, against a real ComfyUI on the CPU.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfy-venv/bin/python \\
        python -m pytest -q tests/test_browser.py -s        # needs: pip install playwright; a chromium binary

For every workflow in workflows/: drop the file on the page (a DragEvent carrying the JSON file, as a user's
drag and drop), then assert no dialog (missing models/nodes), no overlapping node rectangles in the live graph
(title bar included, after the frontend resized the nodes), every node inside the visible canvas, shrink the
sizes in the widgets (64x64, 2 steps, few frames), press Run, see progress (websocket events and the "[n%]" page
title), wait for success, and find the output on the output node. Also: the template browser lists every
template with its title and a loaded thumbnail, and each node's help page loads on the first URL the frontend
asks for. Screenshots go to $URSA_BROWSER_OUT (default out/browser/, git-ignored).

Skipped, loudly, without COMFYUI_DIR, a chromium (CHROMIUM or /usr/bin/chromium, chromium, chromium-browser,
google-chrome) or the playwright package. Playwright's own browser download is never used.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_workflows  # noqa: E402
import workflow_layout  # noqa: E402


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and (shutil.which(candidate) or os.path.isfile(candidate)):
            return shutil.which(candidate) or candidate
    return None


def _skip_reason() -> str | None:
    if not os.environ.get("COMFYUI_DIR"):
        return "COMFYUI_DIR is not set"
    if not _chromium():
        return "no chromium binary (set CHROMIUM or apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


SKIP = _skip_reason()
if SKIP:
    print(f"\n{'!' * 100}\nSKIPPED: real-browser test ({SKIP})\n{'!' * 100}", file=sys.stderr)
    pytest.skip(f"SKIPPED: real-browser test ({SKIP})", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

import test_comfyui_integration as comfy  # noqa: E402  (server helpers: same setup as the API-level test)

PORTS = range(8700, 8800)
VIEWPORT = {"width": 1280, "height": 800}
OUT = Path(os.environ.get("URSA_BROWSER_OUT", ROOT / "out" / "browser"))
RUN_TIMEOUT_S = 180
# Shrink each run the way a user edits widgets: node title -> {widget: value}. 64x40 keeps the workflows' 8:5
# aspect; text to video runs a square clip (the Save Video player grows to a 1:1 clip and must stay in its group).
TINY = {"URSA Sampler": {"width": 64, "height": 40, "steps": 2, "frames": 5}}
ENCODE = {"width": 64, "height": 40}
SHRINK = {
    "ursa_t2i": {"URSA Sampler": {"width": 64, "height": 40, "steps": 2, "frames": 1}},
    "ursa_t2v": {"URSA Sampler": {"width": 64, "height": 64, "steps": 2, "frames": 5}},
    # The size is set once, on the encode node, and the frame count on the schedule: the sampler's own widgets
    # (64x64 here; left at 512x320, 49 frames for interpolation) are for text-only runs.
    "ursa_i2v": {"URSA Sampler": {"width": 64, "height": 64, "steps": 2, "frames": 9}, "URSA Encode Start": ENCODE,
                 "URSA Frame Schedule": {"frames": 5}},
    "ursa_interpolation": {"URSA Sampler": {"steps": 2}, "URSA Encode Start": ENCODE, "URSA Encode End": ENCODE,
                           "URSA Frame Schedule": {"frames": 9}},
    "ursa_long_video": {**TINY, "URSA Extend Video": {"windows": 1, "window_frames": 5, "overlap": 1, "steps": 2}},
    "ursa_upscale_chain": TINY,
    # Paint with a mask: the canvas (encode node, saved tokens) sets the clip; inputs from comfy.prepare_base.
    "ursa_inpaint_image": {"Image and Mask": {"image": "ursa_inpaint.png"}, "URSA Encode Image": {"width": 64,
                                                                                                 "height": 64},
                           "URSA Sampler": {"steps": 2}},
    "ursa_outpaint_image": {"URSA Pad for Outpaint": {"left": 16, "right": 16}, "URSA Encode Canvas": ENCODE,
                            "URSA Sampler": {"steps": 2}},
    "ursa_inpaint_video": {"First 49 Frames": {"length": 5}, "URSA Encode Video": ENCODE, "URSA Sampler": {"steps": 2}},
    "ursa_reroll_region": {"Canvas (keep)": {"width": 64, "height": 40},
                           "Region (repaint)": {"width": 24, "height": 16}, "Place Region": {"x": 16, "y": 8},
                           "URSA Sampler": {"steps": 2}},
    "ursa_t2i_lora": {"URSA Sampler": {"width": 64, "height": 40, "steps": 2, "frames": 1}},
    "ursa_t2v_two_gpus": {"URSA Sampler": {"width": 64, "height": 64, "steps": 2, "frames": 5},
                          "URSA Devices": {"devices": "cpu, cpu"}},   # this server has no GPU: two CPU copies
}
# What each run makes: (width, height) of the sampler's clip (its preview is labelled with it) and of the video.
MADE = {"ursa_t2i": ((64, 40), None), "ursa_t2v": ((64, 64), (64, 64)), "ursa_i2v": ((64, 40), (64, 40)),
        "ursa_interpolation": ((64, 40), (64, 40)), "ursa_long_video": ((64, 40), (64, 40)),
        "ursa_upscale_chain": ((64, 40), (128, 80)), "ursa_inpaint_image": ((64, 64), None),
        "ursa_outpaint_image": ((64, 40), None), "ursa_inpaint_video": ((64, 40), (64, 40)),
        "ursa_reroll_region": ((64, 40), (64, 40)), "ursa_t2i_lora": ((64, 40), None),
        "ursa_t2v_two_gpus": ((64, 64), (64, 64))}
LOADED_VIDEOS = {"ursa_inpaint_video": [(64, 40)]}  # Load Video's own player shows the source clip (example.mp4)
OUTPUT_NODES = {"SaveImage", "SaveVideo"}
TIMINGS: dict[str, float] = {}
VIEWS: dict[str, list] = {}  # template id -> [initial scale, LiteGraph low-quality (no text) rendering]

# In-page helpers: the live graph as the frontend holds it, and event recorders.
JS_GRAPH = """() => {
  const c = app.canvas, el = c.canvas, r = el.getBoundingClientRect();
  return {
    nodes: app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title, pos: [n.pos[0], n.pos[1]],
                                       size: [n.size[0], n.size[1]]})),
    groups: (app.graph._groups || []).map(g => ({title: g.title, bounding: Array.from(g._bounding)})),
    ds: {scale: c.ds.scale, offset: [c.ds.offset[0], c.ds.offset[1]]},
    canvas: {x: r.x, y: r.y, width: r.width, height: r.height},
    title_height: LiteGraph.NODE_TITLE_HEIGHT,
  };
}"""
JS_RECORD = """() => {
  window.__ursa = {events: [], titles: []};
  for (const type of ['progress', 'execution_success', 'execution_error', 'executed'])
    app.api.addEventListener(type, e => window.__ursa.events.push({type, detail: e.detail}));
  setInterval(() => { const t = document.title; if (t.includes('%') && !window.__ursa.titles.includes(t))
                        window.__ursa.titles.push(t); }, 50);
}"""
JS_COVERED = """(points) => points.map(([x, y]) => {
  const top = document.elementFromPoint(x, y);
  if (!top || top.id === 'graph-canvas' || top.closest('.dom-widget')) return null;
  return (top.className && String(top.className).slice(0, 60)) || top.tagName;
}).filter(Boolean)"""
JS_DROP = """async ([name, text]) => {
  const dt = new DataTransfer();
  dt.items.add(new File([text], name, {type: 'application/json'}));
  const target = document.querySelector('#graph-canvas') || document.body;
  target.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
}"""
JS_MEDIA_SIZES = """async () => {
  const sampler = app.graph._nodes.find(n => n.type === 'URSASampler');
  const urls = app.nodePreviewImages?.[String(sampler.id)] ?? [];
  const preview = await Promise.all(urls.map(u => new Promise(done => {
    const img = new Image(); img.onload = () => done([img.naturalWidth, img.naturalHeight]); img.onerror = () => done(null);
    img.src = u; })));
  const videos = Array.from(document.querySelectorAll('video')).filter(v => v.videoWidth)
    .map(v => [v.videoWidth, v.videoHeight]);
  return {preview, videos};
}"""
JS_CARD_IMAGE_DECODED = """(title) => {  // the template card titled `title`: its thumbnail decoded (else keep waiting)
  const label = Array.from(document.querySelectorAll('.p-dialog *')).find(e => e.children.length === 0 &&
                                                                             e.textContent.trim() === title);
  for (let el = label; el; el = el.parentElement) {
    const img = el.querySelector('img');
    if (img) return img.complete && img.naturalWidth > 0 ? true : null;
  }
  return null;
}"""
JS_NODE_TEXT = """(title) => {  // core's progress text on a node ($$node-text-preview, drawn by the frontend)
  const node = app.graph._nodes.find(n => n.title === title);
  return (node.widgets || []).filter(w => w.name === '$$node-text-preview').map(w => w.value);
}"""
JS_RED_INPUTS = """() => Object.fromEntries(app.graph._nodes.filter(n => (n.inputs || []).some(i => i.hasErrors))
  .map(n => [n.title, n.inputs.filter(i => i.hasErrors).map(i => i.name)]))"""
JS_SET_WIDGETS = """(shrink) => {
  const missing = [];
  for (const [title, values] of Object.entries(shrink)) {
    const node = app.graph._nodes.find(n => n.title === title);
    if (!node) { missing.push(title); continue; }
    for (const [name, value] of Object.entries(values)) {
      const w = node.widgets.find(w => w.name === name);
      if (!w) { missing.push(title + '.' + name); continue; }
      w.value = value; w.callback?.(value);
    }
  }
  app.graph.setDirtyCanvas(true, true);
  return missing;
}"""


# ----------------------------------------------------------------------------------------------- fixtures
def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {PORTS}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_browser_base")
    comfy.prepare_base(base)
    port, log_path = _free_port(), base / "server.log"
    t0 = time.monotonic()
    proc = comfy.start_server(base, port, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        comfy.wait_ready(url, proc, log_path)
        TIMINGS["server start"] = time.monotonic() - t0
        for seed, name in enumerate(("example.png",)):  # the workflows' LoadImage value
            assert comfy.upload_image(url, name, comfy.png_bytes(seed))["name"] == name
        # A returning user: no first-run template browser over the canvas.
        req = urllib.request.Request(url + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        yield {"url": url, "base": base, "log": log_path}
    finally:
        comfy.stop_server(proc)
        print("\n[browser test] seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))
        print("[browser test] initial view (scale, text hidden at DPR 1): " +
              ", ".join(f"{k} {s:.2f}{' LOD' if low else ''}" for k, (s, low) in VIEWS.items()))


@pytest.fixture(scope="module")
def browser():
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server["url"], wait_until="domcontentloaded")
    pg.wait_for_function("() => window.app && window.app.graph && window.app.canvas && app.api", timeout=60_000)
    pg.wait_for_selector('[data-testid="queue-button"]', timeout=60_000)
    pg.evaluate(JS_RECORD)
    pg.errors = errors
    pg.console_errors = []  # e.g. "Error loading extension": the frontend logs it, no page error is raised
    pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" and "ursa" in m.text.lower()
          else None)
    yield pg
    context.close()


# ----------------------------------------------------------------------------------------------- helpers
def visible_dialogs(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('.p-dialog'))
        .filter(d => d.offsetParent !== null || d.getClientRects().length)
        .map(d => d.innerText.slice(0, 300))""")


def live_layout_problems(page, on_screen: bool = True) -> list[str]:
    """The checks of make_workflows --check on the live graph (sizes as the frontend made them), plus (on_screen):
    every node's corners on screen are the canvas itself, not covered by the frontend's panels (side bar, Run bar,
    minimap)."""
    graph = page.evaluate(JS_GRAPH)
    c = graph["canvas"]
    assert (c["x"], c["y"], c["width"], c["height"]) == (0, 0, *workflow_layout.VIEW), c
    assert graph["title_height"] == workflow_layout.TITLE_HEIGHT
    problems = workflow_layout.layout_problems(graph["nodes"], graph["groups"], graph["ds"])
    if not on_screen:  # after a run the queue panel may cover the top right: only overlaps matter then
        return [p for p in problems if "overlap" in p or "sticks out" in p]
    for node in graph["nodes"]:
        x, y, w, h = workflow_layout.to_screen(workflow_layout.node_rect(node["pos"], node["size"]), graph["ds"])
        corners = [[x + 3, y + 3], [x + w - 3, y + 3], [x + 3, y + h - 3], [x + w - 3, y + h - 3]]
        covered = page.evaluate(JS_COVERED, corners)
        if covered:
            problems.append(f"node {node['title']!r} is covered on screen by {covered}")
    return problems


def drop_workflow(page, path: Path) -> None:
    page.evaluate(JS_DROP, [path.name, path.read_text(encoding="utf-8")])
    title = path.stem
    page.wait_for_function("(t) => app.graph._nodes.some(n => n.title === t)", arg="URSA Loader", timeout=30_000)
    page.wait_for_function("(t) => document.title.includes(t)", arg=title, timeout=30_000)
    page.wait_for_timeout(500)  # a few frames: the frontend grows nodes whose widgets need room while drawing


def wait_for_run(page, timeout_s: float) -> dict:
    page.wait_for_function("() => window.__ursa.events.some(e => e.type === 'execution_success' || "
                           "e.type === 'execution_error')", timeout=timeout_s * 1000)
    return page.evaluate("() => window.__ursa")


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("template", make_workflows.TEMPLATES, ids=lambda t: t.id)
def test_workflow_opens_clean_and_runs(page, server, template):
    path = make_workflows.OUT_DIR / f"{template.title}.json"
    t0 = time.monotonic()
    drop_workflow(page, path)
    shot = OUT / f"{template.id}_opened.png"
    page.screenshot(path=str(shot))
    assert visible_dialogs(page) == [], f"dialog after opening {path.name} (see {shot})"
    graph = page.evaluate(JS_GRAPH)
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert sorted(n["title"] for n in graph["nodes"]) == sorted(n["title"] for n in expected["nodes"])
    VIEWS[template.id] = page.evaluate("() => [app.canvas.ds.scale, app.canvas.low_quality]")
    # Every node in view at a zoom where the frontend draws text (layout_problems fails below MIN_SCALE).
    assert live_layout_problems(page) == [], f"{path.name} (see {shot})"
    assert VIEWS[template.id][0] >= workflow_layout.MIN_SCALE and not VIEWS[template.id][1], VIEWS[template.id]

    missing = page.evaluate(JS_SET_WIDGETS, SHRINK[template.id])
    assert missing == [], f"widgets not found: {missing}"
    page.click('[data-testid="queue-button"]')
    record = wait_for_run(page, RUN_TIMEOUT_S)
    TIMINGS[template.id] = time.monotonic() - t0
    page.wait_for_timeout(1000)  # previews render
    page.screenshot(path=str(OUT / f"{template.id}_done.png"))
    types = [e["type"] for e in record["events"]]
    assert "execution_error" not in types, [e for e in record["events"] if e["type"] == "execution_error"]
    assert "progress" in types, f"no progress events: {types}"
    assert record["titles"], "the page title never showed progress ([n%])"
    outputs = page.evaluate("""(types) => app.graph._nodes.filter(n => types.includes(n.type)).map(n => ({
        title: n.title, store: app.nodeOutputs?.[String(n.id)] ?? null,
        imgs: (n.imgs || []).length, videos: document.querySelectorAll('video').length}))""", sorted(OUTPUT_NODES))
    assert outputs, "no output node"
    for out in outputs:
        files = (out["store"] or {}).get("images") or (out["store"] or {}).get("video") or []
        assert files, f"{out['title']}: no output on the node: {out}"
        for f in files:
            q = urllib.parse.urlencode({k: f[k] for k in ("filename", "subfolder", "type") if k in f})
            with urllib.request.urlopen(f"{server['url']}/view?{q}", timeout=30) as r:
                data = r.read()
                assert r.status == 200 and len(data) > 0, f
            (OUT / f"{template.id}_output{Path(f['filename']).suffix}").write_bytes(data)  # kept for a look
    after = live_layout_problems(page, on_screen=False)
    assert after == [], f"after the run (previews shown): {after}"
    clip, video = MADE[template.id]
    media = page.evaluate(JS_MEDIA_SIZES)
    assert media["preview"] and media["preview"][-1] == list(clip), f"sampler preview {media} for a {clip} clip"
    assert page.evaluate(JS_NODE_TEXT, "URSA Sampler")[-1].startswith(f"{clip[0]}×{clip[1]} px")
    shown = sorted([list(v) for v in LOADED_VIDEOS.get(template.id, [])] + ([list(video)] if video else []))
    assert sorted(media["videos"]) == shown, media
    assert not page.errors, page.errors
    assert not page.console_errors, page.console_errors


def test_dialog_detector_sees_the_old_false_missing_model_dialog(page, tmp_path):
    """Control for the "no dialog" assertion: the old loader entry (properties.models naming a folder) still makes the
    frontend report a missing model, and visible_dialogs() sees it."""
    wf = json.loads((make_workflows.OUT_DIR / f"{make_workflows.TEMPLATES[0].title}.json").read_text("utf-8"))
    loader = next(n for n in wf["nodes"] if n["type"] == "URSAModelLoader")
    loader["properties"]["models"] = [{"name": make_workflows.MODEL_NAME, "directory": "ursa",
                                       "url": f"https://huggingface.co/BAAI/{make_workflows.MODEL_NAME}"}]
    path = tmp_path / "old_loader_entry.json"
    path.write_text(json.dumps(wf), encoding="utf-8")
    drop_workflow(page, path)
    page.wait_for_selector(".p-dialog", timeout=15_000)
    dialogs = visible_dialogs(page)
    assert any(make_workflows.MODEL_NAME in d for d in dialogs), dialogs


def test_template_browser_lists_titles_and_thumbnails(page, server):
    with urllib.request.urlopen(server["url"] + "/api/workflow_templates", timeout=30) as r:
        listed = json.load(r).get(comfy.PLUGIN_DIR_NAME, [])
    titles = sorted(t.title for t in make_workflows.TEMPLATES)
    assert sorted(listed) == titles
    for title in titles:  # served from the pack's top-level workflows/ folder, byte for byte
        quoted = urllib.parse.quote(f"{title}.json")
        with urllib.request.urlopen(f"{server['url']}/api/workflow_templates/{comfy.PLUGIN_DIR_NAME}/{quoted}",
                                    timeout=30) as r:
            assert r.read() == (ROOT / "workflows" / f"{title}.json").read_bytes(), title
    fetched = {}  # thumbnail requests the frontend makes: title -> HTTP status
    prefix = f"/workflow_templates/{comfy.PLUGIN_DIR_NAME}/"

    def on_response(response):
        path = urllib.parse.unquote(urllib.parse.urlparse(response.url).path)
        if prefix in path and path.endswith(".jpg"):
            fetched[Path(path).stem] = response.status
    page.on("response", on_response)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.wait_for_selector(".p-dialog", timeout=30_000)
    page.get_by_text(comfy.PLUGIN_DIR_NAME, exact=True).first.click()
    page.screenshot(path=str(OUT / "template_browser.png"))
    decoded = {}
    for title in titles:  # the grid mounts (and fetches the thumbnails of) the cards scrolled into view
        card = page.get_by_text(title, exact=True).first
        card.wait_for(timeout=30_000)
        card.scroll_into_view_if_needed(timeout=30_000)
        # The card shows its thumbnail as a blob: URL once fetched; it must decode.
        decoded[title] = page.wait_for_function(JS_CARD_IMAGE_DECODED, arg=title, timeout=30_000).json_value()
    assert fetched == {t: 200 for t in titles}, f"thumbnail requests (title -> status): {fetched}"
    assert decoded == {t: True for t in titles}, decoded


def test_help_pages_load_on_first_request(page, server):
    """For each URSA node: select it on the canvas, press the selection toolbox's info button, and record the docs
    requests the frontend makes (nodeHelpService.ts asks /extensions/<pack>/docs/<Node>/<locale>.md first, then
    <Node>.md): the first must succeed (a 404 there costs every user a failed request and shows a fallback)."""
    node_ids = sorted(k for k in make_workflows.load_specs() if k.startswith("URSA"))
    requests: list[tuple[str, int]] = []

    def on_response(response):
        if "/docs/" in response.url and response.url.endswith(".md"):
            requests.append((urllib.parse.urlparse(response.url).path, response.status))
    page.on("response", on_response)
    first = {}
    for node_id in node_ids:
        requests.clear()
        page.evaluate("""(type) => { app.graph.clear(); const n = LiteGraph.createNode(type);
            n.pos = [300, 300]; app.graph.add(n); app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1;
            app.canvas.deselectAll?.(); app.canvas.selectNode(n); app.graph.setDirtyCanvas(true, true); }""", node_id)
        page.locator('[data-testid="info-button"]').first.click(timeout=15_000)
        deadline = time.monotonic() + 15
        while not requests and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert requests, f"{node_id}: the frontend asked for no help page"
        first[node_id] = requests[0]
        if node_id == "URSASampler":
            page.wait_for_timeout(500)
            page.screenshot(path=str(OUT / "help_URSASampler.png"))
    expected = {n: (f"/extensions/{comfy.PLUGIN_DIR_NAME}/docs/{n}/en.md", 200) for n in node_ids}
    assert first == expected, f"first help request per node (path, status): {first}"


def run_and_read_errors(page) -> dict:
    """Press Run on a graph the server refuses: the errors it sent (node title -> [(input, message)]), the inputs
    the frontend marked red (node title -> names) and the error dialog's text."""
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as answer:
        page.click('[data-testid="queue-button"]')
    assert answer.value.status == 400
    titles = page.evaluate("() => Object.fromEntries(app.graph._nodes.map(n => [String(n.id), n.title]))")
    errors = {titles.get(nid, nid): [(e.get("extra_info", {}).get("input_name"), f"{e['message']}: {e['details']}")
                                    for e in entry["errors"]]
              for nid, entry in answer.value.json()["node_errors"].items()}
    page.wait_for_selector(".p-dialog", timeout=15_000)
    page.wait_for_timeout(300)
    found = {"errors": errors, "red": page.evaluate(JS_RED_INPUTS), "dialogs": visible_dialogs(page)}
    page.keyboard.press("Escape")
    return found


def test_each_error_is_shown_once_on_its_widget(page, server, tmp_path):
    """Issue 17.1: one message, one entry, one red widget: the frames rule on frames, the missing folder (with the
    download command) on model_name, NaN-free floats untouched."""
    wf = json.loads((make_workflows.OUT_DIR / "URSA Text to Video.json").read_text("utf-8"))
    sampler = next(n for n in wf["nodes"] if n["type"] == "URSASampler")
    names = [i["name"] for i in make_workflows.load_specs()["URSASampler"]["inputs"] if i["widget"]]
    slot = sum(2 if n in ("seed",) else 1 for n in names[:names.index("frames")])  # seed has its control value
    sampler["widgets_values"][slot] = 6  # a saved file with frames=6 (the frontend snaps what a user types)
    (tmp_path / "frames6.json").write_text(json.dumps(wf), encoding="utf-8")
    drop_workflow(page, tmp_path / "frames6.json")
    found = run_and_read_errors(page)
    assert list(found["errors"]) == ["URSA Sampler"], found
    [(name, message)] = found["errors"]["URSA Sampler"]
    assert name == "frames" and "frames=6 is not allowed" in message, found
    assert found["red"] == {"URSA Sampler": ["frames"]}, found
    assert sum(d.count("frames=6 is not allowed") for d in found["dialogs"]) == 1, found["dialogs"]

    # The case: the Text to Image template opened before the model is downloaded.
    models = server["base"] / "models" / "ursa"
    (models / comfy.MODEL_NAME).rename(tmp_path / "away")
    try:
        drop_workflow(page, make_workflows.OUT_DIR / "URSA Text to Image.json")
        found = run_and_read_errors(page)
        page.screenshot(path=str(OUT / "error_once.png"))
    finally:
        (tmp_path / "away").rename(models / comfy.MODEL_NAME)
    assert list(found["errors"]) == ["URSA Loader"], found
    [(name, message)] = found["errors"]["URSA Loader"]
    assert name == "model_name" and f"'{comfy.MODEL_NAME}' not found" in message, found
    assert "hf download BAAI/URSA-1.7B-FSQ320" in message, message
    assert found["red"] == {"URSA Loader": ["model_name"]}, found
    assert sum(d.count("not found") for d in found["dialogs"]) == 1, found["dialogs"]


def test_second_run_is_not_a_cache_hit(page):
    """Templates randomize the seed after each run (control_after_generate, as core's samplers): Run twice, the
    sampler runs twice."""
    drop_workflow(page, make_workflows.OUT_DIR / "URSA Text to Image.json")
    page.evaluate(JS_SET_WIDGETS, SHRINK["ursa_t2i"])
    seeds, sampler_runs = [], []
    sampler_id = page.evaluate("() => String(app.graph._nodes.find(n => n.type === 'URSASampler').id)")
    for _ in range(2):
        seeds.append(page.evaluate("() => app.graph._nodes.find(n => n.type === 'URSASampler').widgets"
                                   ".find(w => w.name === 'seed').value"))
        page.evaluate("() => { window.__ursa.events = []; }")
        page.click('[data-testid="queue-button"]')
        record = wait_for_run(page, RUN_TIMEOUT_S)
        assert "execution_error" not in [e["type"] for e in record["events"]], record["events"]
        sampler_runs.append(any(e["type"] == "progress" and str(e["detail"].get("node")) == sampler_id
                                for e in record["events"]))
    assert sampler_runs == [True, True], (seeds, sampler_runs)
    assert seeds[0] != seeds[1]


def test_saved_tokens_are_shown_and_listed_without_a_refresh(page):
    """Issue 17.4: URSA Save Tokens shows the saved name on the node; a URSA Load Tokens added after the save lists
    the file (none was on the canvas when it was saved), and one already on the canvas lists the next file at once
    (no R, no page reload)."""
    drop_workflow(page, make_workflows.OUT_DIR / "URSA Long Video (extend in windows).json")
    page.evaluate(JS_SET_WIDGETS, SHRINK["ursa_long_video"])

    def run_and_saved_entry() -> str:
        page.evaluate("() => { window.__ursa.events = []; }")
        page.click('[data-testid="queue-button"]')
        record = wait_for_run(page, RUN_TIMEOUT_S)
        assert "execution_error" not in [e["type"] for e in record["events"]], record["events"]
        [entry] = [e["detail"]["output"]["ursa_token_file"][0] for e in record["events"]
                   if e["type"] == "executed" and "ursa_token_file" in (e["detail"].get("output") or {})]
        assert entry.startswith("ursa_tokens/URSA_long_") and entry.endswith(".safetensors [output]"), entry
        assert page.evaluate(JS_NODE_TEXT, "URSA Save Tokens") == [f"saved {entry}"]
        return entry
    first = run_and_saved_entry()
    later = page.evaluate("""() => { const n = LiteGraph.createNode('URSALoadTokens'); n.pos = [0, 3000];
                                     n.title = 'Load them again'; app.graph.add(n);
                                     return [...n.widgets[0].options.values]; }""")
    assert first in later, later   # added after the save
    second = run_and_saved_entry()
    listed = page.evaluate("() => app.graph._nodes.find(n => n.title === 'Load them again').widgets[0].options.values")
    assert second != first and second in listed, (first, second, listed)   # already on the canvas


def test_frame_schedule_shows_inputs_by_mode(page):
    """given_frames only in extension, keyframes only in custom keyframes (web/js/ursa.js reads the modes from the
    node definition); the widgets stay in the node, so saved workflows keep their values."""
    drop_workflow(page, make_workflows.OUT_DIR / "URSA Image to Video.json")
    shown = """(mode) => { const n = app.graph._nodes.find(n => n.type === 'URSAFrameSchedule');
        if (mode) { const w = n.widgets.find(w => w.name === 'mode'); w.value = mode; w.callback?.(mode); }
        return n.widgets.filter(w => !w.hidden).map(w => w.name); }"""
    common = ["mode", "frames", "start_time", "hold"]
    assert page.evaluate(shown, None) == common
    assert page.evaluate(shown, "extension") == common[:3] + ["given_frames"] + common[3:]
    assert page.evaluate(shown, "custom keyframes") == common[:3] + ["keyframes"] + common[3:]
    assert page.evaluate(shown, "interpolation") == common
    assert len(page.evaluate("() => app.graph._nodes.find(n => n.type === 'URSAFrameSchedule').widgets")) == 6
