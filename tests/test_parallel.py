"""CFG parallel and sequence parallel on CPU ranks (gloo, spawned as torchrun would): the same tokens as one
process in fp32, and a layout the world size or the heads cannot take is one clear error."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parallel_fixtures import SAMPLING, masked_inputs, two_kv_head_model
from ursa_core import rules
from ursa_core.errors import InputError
from ursa_core.sampling.generate import generate

WORKER = Path(__file__).with_name("parallel_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list, world: int, timeout: float = 120, cwd=None) -> list[subprocess.CompletedProcess]:
    """`world` ranks of `args` with torchrun's env:// variables on loopback; returns each rank's result."""
    port, procs = _free_port(), []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, *map(str, args)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=cwd))
    return finished(procs, timeout)


def finished(procs: list[subprocess.Popen], timeout: float) -> list[subprocess.CompletedProcess]:
    """Each process's result once it ended (killed after `timeout` seconds)."""
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            proc.kill()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def single_tokens(tiny_dir):
    return generate(two_kv_head_model(tiny_dir), "a red fox", **SAMPLING).tokens


@pytest.mark.parametrize("mode, world", [("cfg", 2), ("sp", 2), ("cfg+sp", 4)])
def test_parallel_tokens_equal_one_process(tiny_dir, tmp_path, single_tokens, mode, world):
    out = tmp_path / "tokens.pt"
    results = launch([WORKER, tiny_dir, mode, out], world)
    assert [r.returncode for r in results] == [0] * world, [r.stderr[-2000:] for r in results]
    per_rank = torch.load(out)
    assert per_rank.shape == (world, *single_tokens.shape)
    for tokens in per_rank:                      # every rank ends with the same tokens, equal to one process
        assert torch.equal(tokens, single_tokens)
    # the ranks really exchanged data: per guided step an all_gather of hidden states (cfg); per sharded step four
    # all-to-alls a layer and two token gathers. Of the 4 steps run (step 0, t = 0, jumps nowhere and is skipped)
    # 3 are guided; the unguided one is sharded over every rank in all three modes.
    calls = [int(r.stdout.split("collectives ")[1].split()[0]) for r in results]
    sharded_step = 4 * 2 + 2                     # the tiny stack has 2 layers
    expected = 3 * ((mode != "sp") + ("sp" in mode) * sharded_step) + 1 * sharded_step
    assert calls == [expected] * world


@pytest.mark.parametrize("mode, world", [("cfg", 2), ("sp", 2), ("cfg+sp", 4)])
def test_a_repaint_holds_the_source_and_equals_one_process(tiny_dir, tmp_path, mode, world):
    """Issue 18 under CFG parallel and Ulysses: tokens outside the mask are the source exactly on every rank, and
    the repainted ones are those of one process (the block lies on one sequence rank only)."""
    model = two_kv_head_model(tiny_dir)
    starts, given = masked_inputs(model.codebook_size)
    single = generate(model, "a red fox", schedule=starts, given_tokens=given, **SAMPLING).tokens
    held = starts.held().view(1, *starts.latent_shape).expand_as(given)
    assert torch.equal(single[held], given[held]) and int((~held).sum()) == 6
    out = tmp_path / "tokens.pt"
    results = launch([WORKER, tiny_dir, mode, out, "mask"], world)
    assert [r.returncode for r in results] == [0] * world, [r.stderr[-2000:] for r in results]
    for tokens in torch.load(out):
        assert torch.equal(tokens, single)


def test_wrong_world_size_is_one_line_on_every_rank(tiny_dir, tmp_path):
    results = launch([WORKER, tiny_dir, "cfg+sp", tmp_path / "t.pt"], 2)
    assert [r.returncode for r in results] == [2, 2]
    for r in results:
        line = r.stderr.strip()
        assert line.startswith("error: parallel='cfg+sp' with 2 rank(s)") and "\n" not in line


@pytest.mark.parametrize("mode, world, kv, message", [
    ("cfg", 3, 2, "CFG parallel runs on exactly 2 ranks"),
    ("sp", 4, 2, "KV heads do not divide by 4"),
    ("cfg+sp", 6, 8, "KV heads do not divide by 3"),
    ("none", 2, 8, "one generation runs on one rank"),
    ("ring", 2, 8, "use one of none, cfg, sp, cfg+sp"),
])
def test_layout_rules(mode, world, kv, message):
    with pytest.raises(InputError) as err:
        rules.parallel_layout(mode, world, kv)
    assert message in str(err.value)
    assert rules.parallel_layout("cfg+sp", 8, 8) == (2, 4) and rules.parallel_layout("sp", 2, 8) == (1, 2)


def test_parallel_benchmark_runs_on_two_cpu_ranks(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_parallel.py"
    out = tmp_path / "bench.json"
    results = launch([bench, "--quick", "--modes", "single,sp", "--steps", "3", "--batch-prompts", "3",
                      "--batch-steps", "2", "--out", out], 2)
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    report = __import__("json").loads(out.read_text())
    sp = report["modes"]["sp"]
    assert report["world"] == 2 and sp["ranks"] == 2 and sp["tokens_equal_to_single"] == 1.0
    assert sp["comm_calls"] > 0 and sp["comm_s_per_step"] > 0 and sp["executed_steps"] == 2  # step 0 is a no-op
    assert report["batch"]["clips"] == 3 and sum(report["batch"]["clips_per_rank"]) == 3
    sys.path.insert(0, str(bench.parent))
    from parallel_table import table
    rows = table([report]).splitlines()
    sp_row = next(row for row in rows if row.startswith("| 2 | sp |"))
    ratio = float(sp_row.split("|")[4])          # against rank 0's single run of the same report
    assert abs(ratio - sp["total_s"] / report["modes"]["single"]["total_s"]) < 0.01


class _Checked(Exception):
    """Stops a run at its memory estimate, the last check before the model loads."""


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_a_ranks_checks_ask_about_its_own_gpu(tiny_dir, tmp_path, monkeypatch, command):
    """Under torchrun, rank 1 checks its options and the memory estimate against cuda:1, the GPU it will run on,
    never against GPU 0 (every rank would open a context there and read its free memory). CUDA is pretended, so
    the option and memory checks are replaced by recorders."""
    from types import SimpleNamespace

    from ursa_core.cli import batch_command, generate_command
    from ursa_core.cli.command_line import build_parser

    seen = []

    def devices(args, kwargs) -> list:
        return [value for value in (*args, *kwargs.values()) if isinstance(value, torch.device)]

    def options(*args, **kwargs):
        seen.append(("options", devices(args, kwargs)))
        return torch.float32

    def clip(*args, **kwargs):
        seen.append(("clip", devices(args, kwargs)))
        raise _Checked

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for module in (generate_command, batch_command):   # raising=False: a module may reach them through the other
        monkeypatch.setattr(module, "check_options", options, raising=False)
        monkeypatch.setattr(module, "check_clip", clip, raising=False)
    if command == "generate":
        words = ["generate", "--prompt", "a fox", "--out", str(tmp_path / "a.png"), "--parallel", "cfg"]
    else:
        (tmp_path / "p.txt").write_text("a fox\n", encoding="utf-8")
        words = ["batch", "--prompts", str(tmp_path / "p.txt"), "--outdir", str(tmp_path / "out")]
    args = build_parser().parse_args([*words, "--model", str(tiny_dir)])
    session = SimpleNamespace(rank=1, world=2, local_rank=1, store=None)
    run = generate_command.run_generate if command == "generate" else batch_command.run_batch
    with pytest.raises(_Checked):
        run(args, session)
    assert seen == [("options", [torch.device("cuda:1")]), ("clip", [torch.device("cuda:1")])]
