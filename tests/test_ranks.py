"""Failures under torchrun (CPU ranks, gloo): a rank that fails, is killed or is interrupted stops every rank within
seconds, with one line for the whole launch and exit 1 or 130, never a traceback; a resume completes the set. The
ranks are started as torchrun starts them (env:// variables, rank 0 serving the store) and through `ursa launch`
(torchrun's own launcher, its agent serving the store). `ursa batch` and `ursa generate --parallel` share it."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_parallel import _free_port
from ursa_core.parallel.ranks import GRACE

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--height", "32", "--width", "32"]
PROMPTS = "\n".join(f"prompt {i}" for i in range(8))
STOPPED_WITHIN = GRACE + 5.0     # seconds from the event to the last rank's exit (a loaded 2-core machine)


class Ranks:
    """Processes of one launch with their output read as it comes (to act on the first progress line)."""

    def __init__(self, argvs: list[list[str]], envs: list[dict], **popen):
        self.procs = [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, **popen) for argv, env in zip(argvs, envs)]
        self.out = [[] for _ in self.procs]
        self.err = [[] for _ in self.procs]
        self.readers = [threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
                        for proc, out, err in zip(self.procs, self.out, self.err)
                        for pipe, lines in ((proc.stdout, out), (proc.stderr, err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe, lines: list) -> None:
        for line in pipe:
            lines.extend(line.rstrip("\n").split("\r"))   # a progress bar redraws its line with \r

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for lines in self.out + self.err for line in lines):
                return
            if all(proc.poll() is not None for proc in self.procs):
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {text!r}: {self.out} {self.err}")

    def finish(self, timeout: float = 120) -> tuple[list[int], float]:
        """Exit codes and the seconds until the last process ended."""
        started = time.time()
        try:
            for proc in self.procs:
                proc.wait(timeout=max(timeout - (time.time() - started), 1))
        finally:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for reader in self.readers:
            reader.join(timeout=5)
        return [proc.returncode for proc in self.procs], time.time() - started

    def stderr_lines(self) -> list[str]:
        return [line for lines in self.err for line in lines if line.strip()]


def rank_env(rank: int, world: int, port: int) -> dict:
    """torchrun's variables for one rank, and the C++ log level `ursa launch` gives its ranks (torch's store client
    prints a C++ stack when the store's host, here rank 0, is killed mid-call; the ranks report it in one line)."""
    return dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR")


def start_ranks(args: list, world: int = 2) -> Ranks:
    port = _free_port()
    argv = [sys.executable, "-m", "ursa_core", *map(str, args)]
    return Ranks([argv] * world, [rank_env(rank, world, port) for rank in range(world)])


def batch_args(tiny_dir, prompts: Path, out: Path, steps: int = 60) -> list:
    return ["batch", "--model", tiny_dir, "--prompts", prompts, "--outdir", out, *FAST, "--steps", steps]


def resume_completes(tiny_dir, prompts: Path, out: Path, steps: int = 60) -> None:
    ranks = start_ranks(batch_args(tiny_dir, prompts, out, steps=steps))
    codes, _ = ranks.finish()
    assert codes == [0, 0], ranks.stderr_lines()
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {line["out"] for line in lines} == {p.name for p in out.glob("*.png")} and len(list(out.glob("*.png"))) \
        == 8
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no lock, no temporaries left


def assert_one_line(ranks: Ranks, starts: str) -> None:
    lines = ranks.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith(starts), lines
    assert not any("Traceback" in line for line in lines)


def kill_mid_set(tiny_dir, tmp_path: Path, victim: int) -> tuple[Ranks, list, float, Path, Path]:
    """Two ranks on an 8-prompt set; `victim` is killed (SIGKILL) once the first output is done."""
    prompts, out = tmp_path / "set.txt", tmp_path / "out"
    prompts.write_text(PROMPTS)
    ranks = start_ranks(batch_args(tiny_dir, prompts, out))
    ranks.wait_for("/8 done")
    ranks.procs[victim].kill()
    codes, seconds = ranks.finish()
    return ranks, codes, seconds, prompts, out


def test_a_killed_rank_stops_the_others_within_seconds_and_a_resume_completes(tiny_dir, tmp_path):
    ranks, codes, seconds, prompts, out = kill_mid_set(tiny_dir, tmp_path, victim=1)
    assert codes == [1, -signal.SIGKILL] and seconds < STOPPED_WITHIN
    assert_one_line(ranks, f"error: rank 1 (pid {ranks.procs[1].pid}) ended without a word (killed?)")
    resume_completes(tiny_dir, prompts, out)


def test_when_rank_0_and_the_store_it_serves_are_killed_the_others_stop(tiny_dir, tmp_path):
    ranks, codes, seconds, _, _ = kill_mid_set(tiny_dir, tmp_path, victim=0)
    assert codes == [-signal.SIGKILL, 1] and seconds < STOPPED_WITHIN
    assert_one_line(ranks, "error: ")
    assert "rank 0" in ranks.stderr_lines()[0] or "lost contact" in ranks.stderr_lines()[0]


def test_a_failing_rank_stops_every_rank_with_one_line(tiny_dir, tmp_path):
    prompts, out = tmp_path / "set.txt", tmp_path / "out"
    prompts.write_text(PROMPTS)
    out.mkdir()
    from ursa_core.batch.prompt_sets import read_jobs
    blocked = out / read_jobs(prompts, ext=".png")[3].out
    blocked.mkdir()                                   # that output cannot be written: whichever rank claims it fails
    ranks = start_ranks(batch_args(tiny_dir, prompts, out, steps=20))
    codes, _ = ranks.finish()
    assert codes == [1, 1]
    assert_one_line(ranks, f"error: {blocked}: cannot write")


def test_a_refusal_found_by_rank_0_alone_is_one_line_and_exit_2_on_every_rank(tiny_dir, tmp_path):
    from ursa_core.cli import main as cli_main

    prompts, out = tmp_path / "set.txt", tmp_path / "out"
    prompts.write_text("a fox\n")
    assert cli_main(["batch", "--model", str(tiny_dir), "--prompts", str(prompts), "--outdir", str(out), *FAST,
                     "--steps", "2"]) == 0
    ranks = start_ranks(batch_args(tiny_dir, prompts, out, steps=3))   # other settings: rank 0 refuses the folder
    codes, _ = ranks.finish()          # (start-up included, so no time bound: rank 1 would otherwise wait forever)
    assert codes == [2, 2]
    assert_one_line(ranks, f"error: --outdir {out}: 1 finished output(s) there were made under another seed rule")


def test_ctrl_c_stops_every_rank_with_one_line(tiny_dir, tmp_path):
    prompts, out = tmp_path / "set.txt", tmp_path / "out"
    prompts.write_text(PROMPTS)
    ranks = start_ranks(batch_args(tiny_dir, prompts, out))
    ranks.wait_for("/8 done")
    for proc in ranks.procs:                          # as a terminal's Ctrl-C reaches every process of the group
        proc.send_signal(signal.SIGINT)
    codes, seconds = ranks.finish()
    assert codes == [130, 130] and seconds < STOPPED_WITHIN
    assert_one_line(ranks, "cancelled")


def test_ursa_launch_ends_in_one_line_on_ctrl_c_and_on_a_failure(tiny_dir, tmp_path):
    prompts, out = tmp_path / "set.txt", tmp_path / "out"
    prompts.write_text(PROMPTS)
    launcher = [sys.executable, "-m", "ursa_core", "launch", "--nproc-per-node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ranks = Ranks([[*launcher, *map(str, batch_args(tiny_dir, prompts, out))]], [env], start_new_session=True)
    ranks.wait_for("/8 done")
    os.killpg(ranks.procs[0].pid, signal.SIGINT)                 # Ctrl-C: the launcher and both ranks get it
    codes, seconds = ranks.finish()
    assert codes == [130] and seconds < STOPPED_WITHIN + 5
    assert_one_line(ranks, "cancelled")
    items, failing = tmp_path / "set.jsonl", tmp_path / "failing"
    items.write_text("\n".join(json.dumps({"prompt": f"p{i}", "id": "blocked" if i == 2 else f"p{i}"})
                               for i in range(6)))
    (failing / "blocked-0.png").mkdir(parents=True)   # whichever rank claims it cannot write it
    ranks = Ranks([[*launcher, *map(str, batch_args(tiny_dir, items, failing, steps=5))]], [env],
                  start_new_session=True)
    codes, _ = ranks.finish()
    assert codes == [1]
    assert_one_line(ranks, f"error: {failing / 'blocked-0.png'}: cannot write")


def test_a_bad_option_of_ursa_launch_is_one_line_before_any_rank_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ursa_core", "launch", "--nproc-per-node", "2", "batch",
                           "--model", "tiny", "--prompts", "x.txt"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.strip() == "error: the following arguments are required: --outdir"
    done = subprocess.run([sys.executable, "-m", "ursa_core", "launch", "--nproc-per-node", "2"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ursa launch: give torchrun's options")


def test_a_parallel_generation_stops_when_a_rank_is_killed(tiny_dir, tmp_path):
    ranks = start_ranks(["generate", "--parallel", "cfg", "--model", tiny_dir, "--prompt", "a red fox", "--frames",
                         "5", *FAST, "--steps", "400", "--out", tmp_path / "fox.mp4"])
    ranks.wait_for("sampling")
    time.sleep(1.0)                                   # well inside the steps, both ranks in their collectives
    ranks.procs[1].kill()
    codes, seconds = ranks.finish()
    assert codes == [1, -signal.SIGKILL] and seconds < STOPPED_WITHIN
    lines = [line for line in ranks.stderr_lines() if not line.startswith("sampling:")]   # rank 0's bar
    assert lines == [f"error: rank 1 (pid {ranks.procs[1].pid}) ended without a word (killed?); every rank stops"]
    assert not (tmp_path / "fox.mp4").exists()
