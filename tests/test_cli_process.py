"""`ursa` as a process (issue 17, items 9, 11, 12): help and version without torch and one line naming torch for every
command that needs it; help that describes the tool and shows every default; a real Ctrl-C (SIGINT) at any moment,
imports included, is exit 130 with `cancelled` and no traceback.

"Without torch" is a Python where `import torch` fails as on a machine without it: tests/no_torch/sitecustomize.py,
which Python runs at startup, blocks the import (torch itself stays installed).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ursa_core
from ursa_core import cli
from ursa_core.cli import command_line

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = ROOT / "tests" / "no_torch"


def env(no_torch: bool = False) -> dict:
    extra = [str(NO_TORCH)] if no_torch else []
    path = os.pathsep.join([*extra, str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}


def ursa(*args: str, no_torch: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ursa_core", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env(no_torch))


# --- without torch (item 9) -----------------------------------------------------------------------------------------

def test_the_blocker_hides_torch():
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, timeout=60,
                           env=env(no_torch=True))
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["generate", "--help"], ["batch", "--help"],
                                  ["decode", "--help"], ["make-tiny", "--help"], ["download", "--help"]],
                         ids=lambda a: " ".join(a))
def test_help_and_version_work_without_torch(args):
    result = ursa(*args, no_torch=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("ursa 0.") if args == ["--version"] else "usage: ursa" in result.stdout
    if args == ["generate", "--help"]:
        assert "(default: 7.0)" in " ".join(result.stdout.split())


@pytest.mark.parametrize("command", [
    ["generate", "--model", "tiny", "--prompt", "a fox", "--out", "out.png"],
    ["generate", "--model", "tiny", "--prompt", "a fox", "--out", "out.png", "--attention", "sdpa"],  # while parsing
    ["batch", "--model", "tiny", "--prompts", "p.txt", "--outdir", "out"],
    ["decode", "--tokens", "t.safetensors", "--out", "out.png"],
    ["make-tiny", "somewhere"],
    ["download", "BAAI/URSA-1.7B-FSQ320"]], ids=lambda c: " ".join(c[:1] + c[-2:]))
def test_every_command_without_torch_says_so_in_one_line(tmp_path, command):
    result = subprocess.run([sys.executable, "-m", "ursa_core", *command], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=env(no_torch=True))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: `ursa {command[0]}` needs PyTorch, which is not installed here")
    assert "pip install torch" in lines[0] and "ComfyUI" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_the_library_imports_without_torch():
    code = ("import ursa_core; print(ursa_core.__version__, len(ursa_core.__all__))\n"
            "try:\n    ursa_core.load\nexcept ModuleNotFoundError as exc:\n    print('needs', exc.name)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env=env(no_torch=True))
    assert result.returncode == 0, result.stderr
    version, count, _, needs = result.stdout.split()
    assert int(count) == len(ursa_core.__all__) and needs == "torch"


# --- help (item 11) -------------------------------------------------------------------------------------------------

def help_text(capsys, *args: str) -> str:
    assert cli.main([*args, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())   # wrapping never splits what the tests look for


def test_top_level_help_describes_the_tool_one_line_per_command(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.split("\n\n")[1].startswith("URSA (uniform discrete diffusion with a metric path) on the command line")
    commands = re.findall(r"^    (\S+) +(\S.*)$", out, flags=re.M)
    assert [name for name, _ in commands] == ["generate", "batch", "launch", "decode", "make-tiny", "download"]
    assert "Exit codes: 0 done; 1" in " ".join(out.split())


def test_every_option_with_a_default_shows_it():
    parser = command_line.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    unshown = [(name, action.dest) for name, sub in subparsers.items() for action in sub._actions
               if action.option_strings and action.default not in (None, False, "", "==SUPPRESS==")
               and "%(default)s" not in (action.help or "")]
    assert unshown == []


@pytest.mark.parametrize("command,shown", [
    ("generate", ["--cfg CFG classifier-free guidance scale; <= 1: one branch, no negative prompt (default: 7.0)",
                  "(default: 0)", "--guidance-trunc GUIDANCE_TRUNC guidance applies while the clock t < this "
                  "(default: 0.9)", "(default: 1)", "pixels (default: 320 for URSA-1.7B-FSQ320, 1024 for "
                  "URSA-1.7B-IBQ1024, 64 for --model tiny)", "sampling steps, images/videos (default: 25/50 for "
                  "URSA-1.7B-FSQ320, 25/50 for URSA-1.7B-IBQ1024, 8/8 for --model tiny)"]),
    ("batch", ["one 2x2 grid) (default: 1)", "(default: 7.0)"]),
    ("download", ["(default: models/ursa)"])])
def test_help_shows_the_defaults_the_issue_named(capsys, command, shown):
    text = help_text(capsys, command)
    for piece in shown:
        assert piece in text


# --- Ctrl-C at any moment (item 12) ---------------------------------------------------------------------------------

# When the SIGINT is sent: once the process has written `pattern` (its own output, or `python -X importtime`'s line
# for a module whose import just finished), plus `delay` seconds. The import lines time the signal to a phase of the
# import without any hook in the product. The run itself never ends by itself (1000 steps), so every signal lands.
MOMENTS = {
    # The first import line after ursa_core.cli's own: console() runs, and main() is importing the parser. (Before it,
    # CPython starts and imports `ursa_core.cli`, a few ms in which CPython answers Ctrl-C itself.)
    "first ursa statement": (rb"\|\s+ursa_core\.cli\n[^\n]*\n", 0.0),
    "parser module imported": (rb"\|\s+ursa_core\.cli\.command_line\n", 0.0),
    "torch half imported": (rb"\|\s+torch\._C\n", 0.0),
    "torch.nn imported": (rb"\|\s+torch\.nn\n", 0.0),
    "job modules importing": (rb"\|\s+ursa_core\.parallel\n", 0.0),
    "model loaded": (rb"\nloaded ", 0.0),
    "sampling": (rb"sampling: +\d+%", 0.3),
}


def interrupt(argv: list[str], pattern: bytes, delay: float, again: bool = False) -> tuple[int, str]:
    """Run `python -X importtime -m ursa_core *argv`, SIGINT it at the moment, and return (exit code, output).
    `again`: keep sending SIGINT every 2 ms until it exits (a user pressing Ctrl-C repeatedly). A process still
    running 60 s after the moment is killed (exit -9): the interrupt was lost."""
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "ursa_core", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=ROOT, env=env())

    def send():
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        while again and proc.poll() is None:
            time.sleep(0.002)
            proc.send_signal(signal.SIGINT)

    output, sender, watchdog = b"", None, threading.Timer(60, proc.kill)
    try:
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            output += chunk
            if sender is None and re.search(pattern, output):
                sender = threading.Thread(target=send)
                sender.start()
                watchdog.start()
        code = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.stdout.close()
        if sender is not None:
            sender.join()
    assert sender is not None, "the moment never came"
    return code, output.decode(errors="replace")


def messages(output: str) -> list[str]:
    """The process's own lines, without import-time lines and progress bars (a bar that Ctrl-C stopped while it was
    being drawn shares its line with what comes after)."""
    lines = (re.sub(r"sampling: [^\]]*(\]|$)", "", line) for line in output.replace("\r", "\n").splitlines())
    return [line for line in lines if line.strip() and not line.startswith("import time:")]


@pytest.mark.parametrize("moment", MOMENTS, ids=MOMENTS)
def test_ctrl_c_at_any_moment_is_cancelled(tmp_path, tiny_dir, moment):
    out = tmp_path / "out.mp4"
    code, output = interrupt(["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--frames", "5",
                              "--steps", "1000", "--out", str(out)], *MOMENTS[moment])
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[output.find("Traceback"):][:3000]
    assert code == 130 and messages(output)[-1] == "cancelled", messages(output)[-5:]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_pressed_again_and_again_is_one_cancel(tmp_path, tiny_dir):
    code, output = interrupt(["generate", "--model", str(tiny_dir), "--prompt", "a fox", "--frames", "5",
                              "--steps", "1000", "--out", str(tmp_path / "out.mp4")], MOMENTS["sampling"][0], 0.2,
                             again=True)
    assert "Traceback" not in output and code == 130, output[output.find("Traceback"):][:3000]
    assert [line for line in messages(output) if line == "cancelled"] == ["cancelled"]
