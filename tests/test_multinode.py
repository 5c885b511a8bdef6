"""Across machines: `ursa generate --parallel` and `ursa batch` under multi-node torchrun, as two "nodes" on this host
(two torchrun launchers with --nnodes 2 meeting at a c10d rendezvous on localhost, gloo on the CPU); the files
they write equal the one-process run's, byte for byte."""
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_parallel import _free_port, finished

ROOT = Path(__file__).resolve().parents[1]   # this checkout's ursa_core, not an installed one
FAST = ["--height", "32", "--width", "32", "--steps", "3"]


def two_nodes(command: list, nproc_per_node: int = 1, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 ... -m ursa_core <command>` started twice, as on two machines; each launcher's result."""
    rendezvous = ["--nnodes", "2", "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", uuid.uuid4().hex[:8]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "ursa_core",
                                   *map(str, command)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    return finished(launchers, timeout)


def one_process(command: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ursa_core", *map(str, command)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)


def test_generate_cfg_parallel_on_two_nodes_equals_one_process(tiny_dir, tmp_path):
    def command(name: str) -> list:
        return ["generate", "--model", tiny_dir, "--prompt", "a red fox", "--frames", "5", "--seed", "4", *FAST,
                "--out", tmp_path / f"{name}.mp4", "--save-tokens", tmp_path / f"{name}.safetensors"]
    alone = one_process(command("alone"))
    assert alone.returncode == 0, alone.stderr
    nodes = two_nodes([*command("nodes"), "--parallel", "cfg"])   # (sp: the tiny model has one KV head)
    assert [n.returncode for n in nodes] == [0, 0], [n.stderr[-1500:] for n in nodes]
    assert sum("cfg parallel over 2 ranks" in n.stdout for n in nodes) == 1   # rank 0 (either node) reports
    tokens = [load_file(tmp_path / f"{name}.safetensors")["tokens"] for name in ("nodes", "alone")]
    assert torch.equal(*tokens)
    assert (tmp_path / "nodes.mp4").read_bytes() == (tmp_path / "alone.mp4").read_bytes()


def test_batch_on_two_nodes_equals_one_process(tiny_dir, tmp_path):
    prompts = tmp_path / "set.txt"
    prompts.write_text("a red fox\na grey wolf\na brown bear\n")

    def command(outdir: str) -> list:
        return ["batch", "--model", tiny_dir, "--prompts", prompts, "--samples", "2", "--outdir", tmp_path / outdir,
                *FAST]
    alone = one_process(command("alone"))
    assert alone.returncode == 0, alone.stderr
    nodes = two_nodes(command("nodes"))
    assert [n.returncode for n in nodes] == [0, 0], [n.stderr[-1500:] for n in nodes]
    made = sorted(p.name for p in (tmp_path / "alone").glob("*.png"))
    assert len(made) == 6 and sorted(p.name for p in (tmp_path / "nodes").glob("*.png")) == made
    for name in made:
        assert (tmp_path / "nodes" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
    ranks = " ".join(n.stdout for n in nodes)
    assert all(f"rank {r}:" in ranks for r in range(2))   # every rank of both machines took part


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("victim", ["rendezvous host", "other machine"])
def test_a_rank_killed_on_one_machine_stops_the_other_machine_within_seconds(tiny_dir, tmp_path, victim):
    """`ursa launch` on two "machines" (c10d rendezvous; the first one started serves it): a parallel generation's
    rank on one machine is killed mid-run. The other machine's rank stops within seconds (ursa_core.parallel.ranks)
    whether the killed machine served the rendezvous (its launcher leaves, the store with it) or not; both launchers
    exit 1 with error lines and no traceback, and no output is left."""
    import psutil
    from test_ranks import STOPPED_WITHIN, Ranks

    port = _free_port()
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", uuid.uuid4().hex[:8]]
    command = ["generate", "--parallel", "cfg", "--model", tiny_dir, "--prompt", "a red fox", "--frames", "5",
               "--height", "32", "--width", "32", "--steps", "400", "--out", tmp_path / "fox.mp4"]
    launcher = [sys.executable, "-m", "ursa_core", "launch", *rendezvous, *map(str, command)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR")
    host = Ranks([launcher], [env], start_new_session=True)
    deadline = time.time() + 60
    while not listening(port) and time.time() < deadline:   # the first launcher serves the rendezvous
        time.sleep(0.1)
    other = Ranks([launcher], [env], start_new_session=True)
    machines = {"rendezvous host": host, "other machine": other}
    other.wait_for("sampling") if any("sampling" in line for line in host.err[0]) else host.wait_for("sampling")
    time.sleep(1.0)                                   # well inside the steps, both ranks in their collectives
    killed = machines[victim]
    rank = next(p for p in psutil.Process(killed.procs[0].pid).children(recursive=True)
                if "ursa_core" in " ".join(p.cmdline()))
    rank.kill()
    began = time.time()
    codes = [m.finish()[0][0] for m in (host, other)]
    assert codes == [1, 1] and time.time() - began < STOPPED_WITHIN, codes
    for machine in (host, other):   # (a launcher's line may follow rank 0's unfinished progress bar on its line)
        lines = [line[line.find("error: "):] if "error: " in line else line for line in machine.stderr_lines()
                 if "error: " in line or not line.startswith("sampling:")]
        assert lines and not any("Traceback" in line for line in lines), lines
        assert lines[-1].startswith("error: "), lines
    assert not (tmp_path / "fox.mp4").exists()
