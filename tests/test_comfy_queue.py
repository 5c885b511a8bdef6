"""scripts/comfy_queue.py against a tiny in-process fake of ComfyUI's HTTP API (shapes taken from 0.8.0)."""
import importlib.util
import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "comfy_queue.py")
_spec = importlib.util.spec_from_file_location("comfy_queue", _SCRIPT)
cq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cq)

WORKFLOW = {
    "3": {"class_type": "URSASampler", "inputs": {"seed": 0, "steps": 4, "model": ["4", 0]},
          "_meta": {"title": "URSA Sampler"}},
    "4": {"class_type": "URSAModelLoader", "inputs": {"model_name": "a"}, "_meta": {"title": "URSA Loader"}},
    "6": {"class_type": "URSATextEncode", "inputs": {"prompt": "x"}, "_meta": {"title": "URSA Prompt"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "ursa"},
          "_meta": {"title": "Save"}},
}
FILES = {("ursa_00001_.png", "", "output"): b"\x89PNG-1", ("clip.mp4", "video", "output"): b"MP4DATA",
         ("a.flac", "", "output"): b"fLaC"}


class FakeComfy:
    """mode: 'success' | 'reject' | 'error' | 'hang'. Records every POSTed prompt and /interrupt."""

    def __init__(self, mode):
        self.mode, self.prompts, self.interrupts, self.polls = mode, [], [], 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj=None, raw=None):
                body = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                data = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/interrupt":
                    fake.interrupts.append(data)
                    return self._send(200, raw=b"")
                fake.prompts.append(data["prompt"])
                if fake.mode == "reject":
                    return self._send(400, {
                        "error": {"type": "prompt_outputs_failed_validation",
                                  "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
                        "node_errors": {"3": {"errors": [{"type": "value_bigger_than_max",
                                                          "message": "Value 999 bigger than max of 200",
                                                          "details": "steps", "extra_info": {}}],
                                              "dependent_outputs": ["9"], "class_type": "URSASampler"}}})
                self._send(200, {"prompt_id": "pid-1", "number": 0, "node_errors": {}})

            def do_GET(self):  # noqa: N802
                url = urllib.parse.urlparse(self.path)
                if url.path == "/queue":
                    return self._send(200, {"queue_running": [[0, "pid-1", {}, {}, []]], "queue_pending": []})
                if url.path == "/history/pid-1":
                    fake.polls += 1
                    if fake.polls < 3 or fake.mode == "hang" and not fake.interrupts:
                        return self._send(200, {})
                    return self._send(200, {"pid-1": fake.history()})
                if url.path == "/view":
                    q = urllib.parse.parse_qs(url.query, keep_blank_values=True)
                    key = (q["filename"][0], q["subfolder"][0], q["type"][0])
                    return self._send(200, raw=FILES[key]) if key in FILES else self._send(404, {})
                self._send(404, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def history(self):
        msgs = [["execution_start", {"prompt_id": "pid-1"}]]
        if self.mode == "error":
            msgs.append(["execution_error", {"prompt_id": "pid-1", "node_id": "3", "node_type": "URSASampler",
                                             "exception_type": "torch.OutOfMemoryError",
                                             "exception_message": "CUDA out of memory\n", "traceback": []}])
            return {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": msgs}}
        if self.mode == "hang":
            msgs.append(["execution_interrupted", {"prompt_id": "pid-1", "node_id": "3", "node_type": "URSASampler"}])
            return {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": msgs}}
        outputs = {"9": {"images": [{"filename": "ursa_00001_.png", "subfolder": "", "type": "output"}]},
                   "10": {"gifs": [{"filename": "clip.mp4", "subfolder": "video", "type": "output",
                                    "format": "video/h264-mp4"}], "animated": [True]},
                   "11": {"audio": [{"filename": "a.flac", "subfolder": "", "type": "output"}]}}
        return {"outputs": outputs, "status": {"status_str": "success", "completed": True, "messages": msgs}}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def workflow_file(tmp_path):
    p = tmp_path / "wf.json"
    p.write_text(json.dumps(WORKFLOW))
    return str(p)


@pytest.fixture
def fake_server(request):
    servers = []

    def start(mode):
        servers.append(FakeComfy(mode))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def _run(server, wf, tmp_path, *extra):
    return cq.main([wf, "--server", server.url, "--out", str(tmp_path / "out"), "--timeout", "10",
                    "--poll", "0.05", *extra])


def test_success_downloads_all_outputs(fake_server, workflow_file, tmp_path, capsys):
    srv = fake_server("success")
    rc = _run(srv, workflow_file, tmp_path, "--set", "URSA Prompt.prompt=a fox", "--set", "URSA Sampler.seed=42",
              "--model", "ursa-1.7b")
    out = capsys.readouterr().out
    assert rc == 0
    sent = srv.prompts[0]
    assert sent["6"]["inputs"]["prompt"] == "a fox" and sent["3"]["inputs"]["seed"] == 42
    assert sent["4"]["inputs"]["model_name"] == "ursa-1.7b"
    for (name, sub, _), data in FILES.items():
        path = tmp_path / "out" / sub / name
        assert path.read_bytes() == data and str(path) in out
    assert "running" in out


def test_shortcuts_pick_first_node_with_input(fake_server, workflow_file, tmp_path):
    srv = fake_server("success")
    assert _run(srv, workflow_file, tmp_path, "--prompt", "snow", "--seed", "7") == 0
    assert srv.prompts[0]["6"]["inputs"]["prompt"] == "snow" and srv.prompts[0]["3"]["inputs"]["seed"] == 7


def test_rejected_prompt_reports_node_errors_exit_2(fake_server, workflow_file, tmp_path, capsys):
    srv = fake_server("reject")
    assert _run(srv, workflow_file, tmp_path, "--set", "URSA Sampler.steps=999") == 2
    err = capsys.readouterr().err
    assert "Prompt outputs failed validation" in err
    assert "node 3 (URSASampler, title 'URSA Sampler')" in err and "bigger than max" in err and "steps" in err


def test_execution_error_reports_node_exit_1(fake_server, workflow_file, tmp_path, capsys):
    srv = fake_server("error")
    assert _run(srv, workflow_file, tmp_path) == 1
    err = capsys.readouterr().err
    assert "node 3 (URSASampler)" in err and "torch.OutOfMemoryError" in err and "CUDA out of memory" in err
    assert "URSA Sampler" in err
    assert not (tmp_path / "out").exists()


def test_interrupt_after(fake_server, workflow_file, tmp_path, capsys):
    srv = fake_server("hang")
    assert _run(srv, workflow_file, tmp_path, "--interrupt-after", "0.2") == 1
    assert srv.interrupts == [{"prompt_id": "pid-1"}]
    assert "interrupted in node 3" in capsys.readouterr().err


def test_timeout_exit_1(fake_server, workflow_file, tmp_path, capsys):
    srv = fake_server("hang")
    assert cq.main([workflow_file, "--server", srv.url, "--timeout", "0.3", "--poll", "0.05"]) == 1
    assert "timeout" in capsys.readouterr().err


def test_unknown_title_is_a_clear_error(fake_server, workflow_file, tmp_path, capsys):
    srv = fake_server("success")
    assert _run(srv, workflow_file, tmp_path, "--set", "URSA Smapler.seed=1") == 2
    err = capsys.readouterr().err
    assert "no node titled 'URSA Smapler'" in err and "URSA Sampler" in err
    assert srv.prompts == []  # nothing was queued


def test_set_parsing():
    wf = json.loads(json.dumps(WORKFLOW))
    cq.apply_set(wf, "URSA Sampler.steps=12")
    cq.apply_set(wf, "URSA Prompt.prompt=a.b = c")   # value may contain '=' and '.'
    cq.apply_set(wf, "9.filename_prefix=out/x")     # node id fallback
    assert wf["3"]["inputs"]["steps"] == 12 and wf["6"]["inputs"]["prompt"] == "a.b = c"
    assert wf["9"]["inputs"]["filename_prefix"] == "out/x"
    with pytest.raises(cq.UsageError):
        cq.apply_set(wf, "no-dot=1")
    with pytest.raises(cq.UsageError):
        cq.apply_shortcut(wf, "nonexistent_input", 1)


def test_a_validation_message_repeated_per_input_is_printed_once():
    """ComfyUI lists a failing validate_inputs message once for every input the validator reads."""
    message = "frames=6 is not allowed: use 1 (an image) or 1 + 4k"
    errors = [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
               "details": f"{name} - {message}"} for name in ("frames", "width", "cfg")]
    errors.append({"type": "value_bigger_than_max", "message": "Value bigger than max", "details": "steps"})
    lines = cq.error_lines(errors)
    assert lines == [f"Custom validation failed for node: {message}", "Value bigger than max: steps"]
