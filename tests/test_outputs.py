"""Atomic output (files/atomic.py) and the writers that use it: PNG, MP4, token files, tiny checkpoint; the CLI's
file errors (one line, exit 2 for bad input, 1 for a failed write) and a real Ctrl-C during a write."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ursa_core import cli
from ursa_core.errors import InputError, OutputError
from ursa_core.files.atomic import atomic_dir, atomic_file, atomic_files, check_writable
from ursa_core.files.media import count_video_frames, write_mp4, write_png

ROOT = Path(__file__).resolve().parents[1]
SLOW_WRITE_CLI = Path(__file__).with_name("slow_write_cli.py")


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if ".partial" in p.name)


@pytest.mark.parametrize("error", [RuntimeError("encoder died"), KeyboardInterrupt()])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, error):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_file(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp != target
            tmp.write_bytes(b"half")
            raise error
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_outputs_get_the_usual_permissions(tmp_path):
    """The temporary becomes the output, so it must not keep a private temp-file mode."""
    (tmp_path / "plain.png").write_bytes(b"x")
    (tmp_path / "plain_dir").mkdir()
    with atomic_file(tmp_path / "atomic.png") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "atomic_dir") as work:
        (work / "f").write_bytes(b"x")

    def mode(name):
        return (tmp_path / name).stat().st_mode & 0o777
    assert mode("atomic.png") == mode("plain.png") and mode("atomic_dir") == mode("plain_dir")


def test_empty_result_is_an_error_not_a_file(tmp_path):
    with pytest.raises(OutputError, match="no data"):
        with atomic_file(tmp_path / "x.png"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_all_frames_or_none(tmp_path):
    targets = [tmp_path / f"f_{i}.png" for i in range(3)]
    with pytest.raises(OutputError):
        with atomic_files(targets) as temps:
            temps[0].write_bytes(b"a")
            temps[1].write_bytes(b"b")  # the third stays empty: nothing may appear
    assert list(tmp_path.iterdir()) == []
    with atomic_files(targets) as temps:
        for i, tmp in enumerate(temps):
            tmp.write_bytes(bytes([65 + i]))
    assert [t.read_bytes() for t in targets] == [b"A", b"B", b"C"]


def test_ctrl_c_during_the_renames_still_publishes_the_whole_set(tmp_path, monkeypatch):
    import ursa_core.files.atomic as atomic

    real_replace, calls = os.replace, []

    def replace_then_ctrl_c(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the first and the second rename
        real_replace(src, dst)
    monkeypatch.setattr(atomic.os, "replace", replace_then_ctrl_c)
    targets = [tmp_path / f"f_{i}.png" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        with atomic_files(targets) as temps:
            for tmp in temps:
                tmp.write_bytes(b"x")
    assert len(calls) == 3 and all(t.read_bytes() == b"x" for t in targets) and leftovers(tmp_path) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as work:
            (work / "a.txt").write_text("new")
            raise KeyboardInterrupt
    assert (target / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_dir(target) as work:
        (work / "b.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "x.png") == tmp_path / "new" / "deeper" / "x.png"
    assert (tmp_path / "new" / "deeper").is_dir() and list((tmp_path / "new" / "deeper").iterdir()) == []
    with pytest.raises(InputError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(InputError, match="cannot write there"):
        check_writable("/proc/x.mp4")


def test_mp4_is_checked_and_a_failing_encoder_keeps_the_old_file(tmp_path):
    good = write_mp4(torch.rand(5, 16, 16, 3), tmp_path / "a.mp4")
    assert count_video_frames(good) == 5
    before = good.read_bytes()
    with pytest.raises(OutputError, match="a.mp4"):
        write_mp4(torch.rand(5, 15, 15, 3), good)  # odd size: H.264 yuv420p refuses it
    assert good.read_bytes() == before and leftovers(tmp_path) == []
    with pytest.raises(OutputError, match="/proc/x.mp4"):
        write_mp4(torch.rand(1, 16, 16, 3), "/proc/x.mp4")


def test_png_frames_are_written_together(tmp_path):
    paths = write_png(torch.rand(3, 8, 8, 3), tmp_path / "f.png")
    assert [p.name for p in paths] == ["f_00000.png", "f_00001.png", "f_00002.png"]
    assert all(p.stat().st_size > 0 for p in paths) and leftovers(tmp_path) == []


# --- CLI: file errors are one line, before the model loads -----------------------------------------------------------


pytestmark = pytest.mark.usefixtures("ursa_cache")  # one $URSA_CACHE per module (conftest)


def gen(model, out, *extra):
    return cli.main(["generate", "--model", str(model), "--prompt", "a fox", "--steps", "2", "--out", str(out),
                     *map(str, extra)])


@pytest.fixture
def no_model_load(monkeypatch):
    """These errors must come before any model loads."""
    from ursa_core.cli import generate_command as job

    def refuse(*a, **k):
        raise AssertionError("model loaded before the input was checked")
    monkeypatch.setattr(job, "load_model", refuse)


@pytest.mark.parametrize("case,expected", [
    ("proc", "/proc/x.mp4: cannot write there"),
    ("dir", "is a folder"),
    ("tokens-dir", "--save-tokens"),
    ("not-image", "not an image"),
])
def test_cli_file_errors_exit_2_with_one_line(tmp_path, capsys, tiny_dir, no_model_load, case, expected):
    (tmp_path / "bad.png").write_text("this is text, not a PNG")
    (tmp_path / "t.safetensors").mkdir()
    out, extra = tmp_path / "out.png", []
    if case == "proc":
        out = "/proc/x.mp4"
    elif case == "dir":
        out = tmp_path / "clip.mp4"
        out.mkdir()
    elif case == "tokens-dir":
        extra = ["--save-tokens", tmp_path / "t"]
    else:
        extra = ["--image", tmp_path / "bad.png"]
    assert gen(tiny_dir, out, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err
    if case == "not-image":
        assert str(tmp_path / "bad.png") in err
    assert not (tmp_path / "out.png").exists()


def test_cli_creates_missing_parent_and_prints_wrote_after_the_file_exists(tmp_path, capsys, tiny_dir):
    out = tmp_path / "a" / "b" / "clip.mp4"
    assert gen(tiny_dir, out, "--frames", 5) == 0
    assert count_video_frames(out) == 5 and f"wrote 5 frame(s) to {out}" in capsys.readouterr().out


def test_cli_write_failure_after_sampling_is_exit_1(tmp_path, capsys, tiny_dir, monkeypatch):
    from ursa_core.files import media

    def failing_encoder(images, path, fps=12.0, before_rename=None):
        with atomic_file(path) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    monkeypatch.setattr(media, "write_mp4", failing_encoder)
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"old video")
    assert gen(tiny_dir, out, "--frames", 5) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: ") and str(out) in last and "No space left" in last and "Traceback" not in err
    assert out.read_bytes() == b"old video" and leftovers(tmp_path) == []


def test_sigint_during_the_write_keeps_the_old_file(tmp_path, tiny_dir):
    """A real Ctrl-C (SIGINT) to a real CLI run while its MP4 is being written (the writer is held open by the
    test's CLI wrapper once the temporary file is complete, so the moment is observable rather than guessed)."""
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"the old video")
    proc = subprocess.Popen([sys.executable, str(SLOW_WRITE_CLI), "generate", "--model", str(tiny_dir), "--prompt",
                             "fox", "--frames", "5", "--steps", "2", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not [p for p in tmp_path.iterdir() if ".partial" in p.name and p.stat().st_size > 0]:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "cancelled"
    assert "Traceback" not in err
    assert out.read_bytes() == b"the old video" and leftovers(tmp_path) == []
