#!/usr/bin/env python3
"""Queue an API-format workflow on a running ComfyUI server, follow it, and download its outputs.

Stdlib only (urllib + json); progress is followed by polling ``GET /queue`` and ``GET /history/<id>``.

    python scripts/comfy_queue.py workflows/api/ursa_t2v.json --server http://127.0.0.1:8188 \
        --set "URSA Prompt.prompt=a fox in snow" --set "URSA Sampler.seed=42" --out out/ --timeout 1800

``--set TITLE.INPUT=VALUE`` targets the node whose ``_meta.title`` is TITLE (falls back to a node id or a
class_type when no title matches); VALUE is parsed as JSON when possible (``42``, ``1.5``, ``true``, ``[..]``),
otherwise kept as a string. Shortcuts: ``--prompt`` sets input ``prompt``, ``--seed`` input ``seed`` and
``--model`` input ``model_name`` on the FIRST node (lowest numeric id) that has that input.

Exit codes: 0 success, 1 execution error / interrupted / timeout, 2 prompt rejected (HTTP 400) or bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

OUTPUT_KEYS = ("images", "gifs", "videos", "audio")
SHORTCUTS = {"prompt": "prompt", "seed": "seed", "model": "model_name"}


class UsageError(Exception):
    """Bad --set / shortcut target; reported with exit code 2."""


# ----------------------------------------------------------------------------------------------- HTTP
def http_json(server: str, path: str, payload=None, timeout: float = 30.0):
    """GET (payload None) or POST JSON; returns (status, decoded json or None). HTTP errors are returned."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(server.rstrip("/") + path, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, {"raw": body.decode(errors="replace")}


def download(server: str, item: dict, out_dir: str, timeout: float = 60.0) -> str:
    """GET /view for one ``{filename, subfolder, type}`` entry; returns the local path."""
    query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                    "type": item.get("type", "output")})
    dest_dir = os.path.join(out_dir, item.get("subfolder", "") or "")
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, os.path.basename(item["filename"]))
    with urllib.request.urlopen(f"{server.rstrip('/')}/view?{query}", timeout=timeout) as r, open(dest, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    return dest


# ----------------------------------------------------------------------------------------------- workflow
def parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def find_nodes(workflow: dict, target: str) -> list[str]:
    """Node ids whose _meta.title equals target; else the node id itself; else nodes of that class_type."""
    by_title = [nid for nid, n in workflow.items() if n.get("_meta", {}).get("title") == target]
    if by_title:
        return by_title
    if target in workflow:
        return [target]
    return [nid for nid, n in workflow.items() if n.get("class_type") == target]


def apply_set(workflow: dict, spec: str) -> None:
    """Apply ``TITLE.INPUT=VALUE`` (the title may contain dots; the last dot before '=' splits)."""
    lhs, sep, value = spec.partition("=")
    target, dot, name = lhs.rpartition(".")
    if not sep or not dot or not target or not name:
        raise UsageError(f"--set {spec!r}: expected TITLE.INPUT=VALUE")
    ids = find_nodes(workflow, target)
    if not ids:
        titles = sorted({n.get("_meta", {}).get("title", "") for n in workflow.values()} - {""})
        raise UsageError(f"--set {spec!r}: no node titled {target!r}; titles in workflow: {titles}")
    for nid in ids:
        workflow[nid].setdefault("inputs", {})[name] = parse_value(value)


def _node_order(nid: str):
    return (0, int(nid), "") if nid.isdigit() else (1, 0, nid)


def apply_shortcut(workflow: dict, input_name: str, value) -> str:
    """Set ``input_name`` on the first node (lowest id) that has it; returns that node id."""
    for nid in sorted(workflow, key=_node_order):
        if input_name in workflow[nid].get("inputs", {}):
            workflow[nid]["inputs"][input_name] = value
            return nid
    raise UsageError(f"no node in the workflow has an input named {input_name!r}")


def load_workflow(path: str, sets: list[str], shortcuts: dict) -> dict:
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    if "nodes" in workflow and "links" in workflow:
        raise UsageError(f"{path} is a UI-format workflow; export it with 'Export (API)'")
    workflow = workflow.get("prompt", workflow)
    for spec in sets:
        apply_set(workflow, spec)
    for key, value in shortcuts.items():
        if value is not None:
            apply_shortcut(workflow, SHORTCUTS[key], value)
    return workflow


# ----------------------------------------------------------------------------------------------- reporting
def node_label(workflow: dict, nid) -> str:
    node = workflow.get(str(nid), {})
    title = node.get("_meta", {}).get("title")
    return f"node {nid} ({node.get('class_type', '?')}" + (f", title {title!r})" if title else ")")


def report_rejection(workflow: dict, body: dict) -> None:
    err = (body or {}).get("error") or {}
    if isinstance(err, dict):
        print(f"prompt rejected: {err.get('message', err)} {err.get('details', '')}".rstrip(), file=sys.stderr)
    else:
        print(f"prompt rejected: {err}", file=sys.stderr)
    for nid, info in ((body or {}).get("node_errors") or {}).items():
        label = node_label(workflow, nid)
        if not workflow.get(str(nid)) and info.get("class_type"):
            label = f"node {nid} ({info['class_type']})"
        for line in error_lines(info.get("errors", [])):
            print(f"  {label}: {line}", file=sys.stderr)


def error_lines(errors: list) -> list:
    """One line per distinct message. ComfyUI repeats a node's failing `validate_inputs` message once for every input
    the validator reads ("cfg - frames=6 ...", "frames - frames=6 ..."): those become one line."""
    lines, seen = [], {}
    for e in errors:
        details = str(e.get("details", ""))
        name, _, text = details.partition(" - ")
        if e.get("type") == "custom_validation_failed" and text:
            if text not in seen:
                seen[text] = len(lines)
                lines.append(f"{e.get('message', '')}: {text}")
            continue
        lines.append(f"{e.get('message', '')}: {details}")
    return lines


def report_failure(workflow: dict, entry: dict) -> None:
    for event, data in (entry.get("status") or {}).get("messages") or []:
        if event == "execution_error":
            print(f"execution error in node {data.get('node_id')} ({data.get('node_type')}): "
                  f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}", file=sys.stderr)
            title = workflow.get(str(data.get("node_id")), {}).get("_meta", {}).get("title")
            if title:
                print(f"  node title: {title}", file=sys.stderr)
            return
        if event == "execution_interrupted":
            print(f"interrupted in {node_label(workflow, data.get('node_id'))}", file=sys.stderr)
            return
    print(f"prompt failed: status {json.dumps(entry.get('status'))}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- run
def wait_for(server: str, prompt_id: str, timeout: float, poll: float = 0.5):
    """Poll until the prompt shows up in history; prints state changes. Returns the entry or None on timeout."""
    deadline, last, start = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        status, hist = http_json(server, f"/history/{prompt_id}")
        if status == 200 and hist and prompt_id in hist:
            return hist[prompt_id]
        _, queue = http_json(server, "/queue")
        running = [q[1] for q in (queue or {}).get("queue_running", [])]
        pending = [q[1] for q in (queue or {}).get("queue_pending", [])]
        state = "running" if prompt_id in running else (
            f"pending ({pending.index(prompt_id) + 1} in queue)" if prompt_id in pending else "waiting")
        if state != last:
            print(f"[{time.monotonic() - start:7.1f}s] {prompt_id}: {state}", flush=True)
            last = state
        time.sleep(poll)
    return None


def collect_outputs(entry: dict) -> list[dict]:
    items = []
    for node_out in (entry.get("outputs") or {}).values():
        for key in OUTPUT_KEYS:
            items += [i for i in node_out.get(key, []) if isinstance(i, dict) and "filename" in i]
    return items


def schedule_interrupt(server: str, after: float, prompt_id_box: dict) -> threading.Timer:
    def fire():
        http_json(server, "/interrupt", {"prompt_id": prompt_id_box["id"]} if prompt_id_box.get("id") else {})
        print(f"sent /interrupt after {after}s", flush=True)
    t = threading.Timer(after, fire)
    t.daemon = True
    t.start()
    return t


def run(args) -> int:
    workflow = load_workflow(args.workflow, args.set,
                             {"prompt": args.prompt, "seed": args.seed, "model": args.model})
    status, body = http_json(args.server, "/prompt", {"prompt": workflow, "client_id": uuid.uuid4().hex})
    if status == 400:
        report_rejection(workflow, body)
        return 2
    if status != 200 or not body or "prompt_id" not in body:
        print(f"unexpected answer from POST /prompt: HTTP {status} {body}", file=sys.stderr)
        return 1
    prompt_id = body["prompt_id"]
    print(f"queued {prompt_id}", flush=True)
    timer = schedule_interrupt(args.server, args.interrupt_after, {"id": prompt_id}) \
        if args.interrupt_after is not None else None
    entry = wait_for(args.server, prompt_id, args.timeout, args.poll)
    if timer:
        timer.cancel()
    if entry is None:
        print(f"timeout after {args.timeout}s waiting for {prompt_id}", file=sys.stderr)
        return 1
    if (entry.get("status") or {}).get("status_str") != "success":
        report_failure(workflow, entry)
        return 1
    for item in collect_outputs(entry):
        print(download(args.server, item, args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workflow", help="API-format workflow JSON")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--set", action="append", default=[], metavar="TITLE.INPUT=VALUE",
                   help="override an input of the node(s) with this _meta.title (repeatable)")
    p.add_argument("--prompt", help="set input 'prompt' on the first node that has it")
    p.add_argument("--seed", type=int, help="set input 'seed' on the first node that has it")
    p.add_argument("--model", help="set input 'model_name' on the first node that has it")
    p.add_argument("--out", default="comfy_outputs", help="directory for downloaded outputs")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for completion")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--interrupt-after", type=float, metavar="SECONDS", help="POST /interrupt after this long")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # unreachable server, unreadable workflow
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1 if isinstance(e, urllib.error.URLError) else 2


if __name__ == "__main__":
    sys.exit(main())
