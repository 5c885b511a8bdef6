"""Prompt sets: formats, output names, seeds, and data-parallel sharing between ranks (gloo, 2 processes)."""
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ursa_core.batch.prompt_sets import MANIFEST, Claims, read_jobs, run_jobs
from ursa_core.errors import InputError

WORKER = Path(__file__).with_name("batch_worker.py")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_prompts_give_one_job_per_sample_with_consecutive_seeds(tmp_path):
    jobs = read_jobs(write(tmp_path / "p.txt", "a fox\n\n a cat \n"), samples=3, seed=5)
    assert len(jobs) == 6
    assert [j.samples[0].prompt for j in jobs[:4]] == ["a fox"] * 3 + ["a cat"]
    seeds = [j.samples[0].seed for j in jobs]
    assert seeds[1] == seeds[0] + 1 and seeds[2] == seeds[0] + 2 and seeds[3] != seeds[0]
    assert len({j.out for j in jobs}) == 6 and all(j.out.endswith(".mp4") for j in jobs)
    assert read_jobs(tmp_path / "p.txt", samples=3, seed=5) == jobs          # the same on every rank and run
    assert read_jobs(tmp_path / "p.txt", samples=3, seed=6)[0].samples[0].seed != seeds[0]


def test_jsonl_items_keep_their_seed_id_and_overrides(tmp_path):
    lines = [{"prompt": "a fox", "seed": 42, "frames": 1, "id": "fox"}, {"prompt": "a cat", "cfg": 5.0}]
    jobs = read_jobs(write(tmp_path / "p.jsonl", "\n".join(map(json.dumps, lines))), samples=2)
    assert [j.out for j in jobs[:2]] == ["fox-0.png", "fox-1.png"]
    assert [j.samples[0].seed for j in jobs[:2]] == [42, 43]
    assert jobs[0].samples[0].settings == {"frames": 1}
    assert jobs[2].samples[0].settings == {"cfg": 5.0} and jobs[2].out.endswith(".mp4")


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "a", "sed": 1}', "unknown key(s) ['sed']"),
    ('{"prompt": ""}', "has no 'prompt'"),
    ('{"prompt": "a"', "not a JSON line"),
    ('{"prompt": "a", "seed": -1}', "seed=-1 is not allowed"),
    ('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}', "write the same output"),
])
def test_bad_jsonl_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(InputError, match=None) as err:
        read_jobs(write(tmp_path / "p.jsonl", text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_geneval_layout(tmp_path):
    write(tmp_path / "metadata.jsonl", '{"tag": "a"}\n{"tag": "b"}\n')
    prompts = [{"id": 0, "prompt": "a bench", "dense_prompt": "a wooden bench"}, {"id": 1, "prompt": "a cow"}]
    jobs = read_jobs(write(tmp_path / "prompts.json", json.dumps(prompts)), samples=4)
    assert [j.out for j in jobs[:2]] == ["00000/samples/00000.png", "00000/samples/00001.png"]
    assert jobs[4].out == "00001/samples/00000.png"
    assert jobs[4].side_files == (("00001/metadata.jsonl", '{"tag": "b"}\n'),)


def test_dpgbench_grid_of_four(tmp_path):
    path = write(tmp_path / "prompts.json", json.dumps([{"id": "111", "prompt": "shoes"}]))
    (job,) = read_jobs(path, samples=4)
    assert job.out == "111.png" and job.layout == "grid2x2" and len(job.samples) == 4
    with pytest.raises(InputError, match="exactly 4 samples"):
        read_jobs(path, samples=2)


def test_vbench_names_files_by_the_short_prompt(tmp_path):
    write(tmp_path / "vb" / "color.txt", "a red bicycle\na green bicycle\n")
    write(tmp_path / "vb" / "color_longer.txt", "a shiny red bicycle by a wall\na green bicycle on grass\n")
    jobs = read_jobs(tmp_path / "vb", samples=5)
    assert jobs[0].out == "color/a red bicycle-0.mp4" and jobs[9].out == "color/a green bicycle-4.mp4"
    assert jobs[0].samples[0].prompt == "a shiny red bicycle by a wall"


def test_single_process_run_resumes_without_redoing(tmp_path):
    jobs = read_jobs(write(tmp_path / "p.txt", "a\nb\nc\n"), samples=1, ext=".txt")
    rendered = []

    def render(job, target):
        rendered.append(job.key)
        target.write_text(job.key)
    run_jobs(jobs, tmp_path / "out", render, Claims(len(jobs)))
    (tmp_path / "out" / jobs[1].out).unlink()             # as if that output had never been finished
    report = run_jobs(jobs, tmp_path / "out", render, Claims(len(jobs)))
    assert rendered == [j.key for j in jobs] + [jobs[1].key]
    assert report.done == [jobs[1].key] and len(report.skipped) == 2
    lines = (tmp_path / "out" / MANIFEST).read_text().splitlines()
    assert [json.loads(line)["job"] for line in lines] == rendered


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(prompts: Path, out: Path, die_at: int = -1) -> list[int]:
    """Two ranks as torchrun would start them (env:// rendezvous on loopback), each running tests/batch_worker.py."""
    port, procs = _free_port(), []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), URSA_TEST_DIE_AT=str(die_at))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(prompts), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    codes = []
    for proc in procs:
        try:
            proc.wait(timeout=120)
        finally:
            proc.kill()
        codes.append(proc.returncode)
    return codes


def _finished(out: Path) -> Counter:
    return Counter(json.loads(line)["job"] for line in (out / MANIFEST).read_text().splitlines())


def test_two_ranks_share_every_job_once_and_the_fast_rank_takes_more(tmp_path):
    prompts = write(tmp_path / "p.txt", "\n".join(f"prompt {i}" for i in range(12)))
    jobs = read_jobs(prompts, samples=2, ext=".txt")
    assert _launch(prompts, tmp_path / "out") == [0, 0]
    done = _finished(tmp_path / "out")
    assert set(done) == {j.key for j in jobs} and set(done.values()) == {1}
    ranks = Counter(json.loads(line)["rank"] for line in (tmp_path / "out" / MANIFEST).read_text().splitlines())
    assert ranks[0] > ranks[1] > 0                       # claimed by speed, not by a fixed split


def test_a_killed_rank_loses_and_duplicates_nothing_after_a_rerun(tmp_path):
    prompts = write(tmp_path / "p.txt", "\n".join(f"prompt {i}" for i in range(8)))
    jobs = read_jobs(prompts, samples=2, ext=".txt")
    out = tmp_path / "out"
    codes = _launch(prompts, out, die_at=2)               # rank 1 dies inside its second job
    assert codes[1] == 9
    first = _finished(out)
    assert len(first) < len(jobs) and set(first.values()) == {1}
    assert _launch(prompts, out) == [0, 0]
    done = _finished(out)
    assert set(done) == {j.key for j in jobs} and set(done.values()) == {1}
    for job in jobs:
        assert (out / job.out).read_text() == f"{job.samples[0].prompt}|{job.samples[0].seed}"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "id": "../escaped"}', "outside --outdir"),
    ('{"prompt": "a", "id": "/tmp/abs"}', "outside --outdir"),
    ('{"prompt": "a", "seed": 18446744073709551615}', "seed="),   # seed + 1 of the second sample would overflow
])
def test_ids_name_files_inside_the_output_folder(tmp_path, line, message):
    with pytest.raises(InputError) as err:
        read_jobs(write(tmp_path / "p.jsonl", line), samples=2)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_evaluation_sets_share_the_prompt_rule(tmp_path):
    write(tmp_path / "ge" / "metadata.jsonl", '{"tag": "a"}\n')
    with pytest.raises(InputError, match="has no 'prompt'"):
        read_jobs(write(tmp_path / "ge" / "prompts.json", '[{"id": 0, "dense_prompt": "x"}]'), samples=1)
    with pytest.raises(InputError, match="has no 'prompt'"):
        read_jobs(write(tmp_path / "dpg" / "prompts.json", '[{"id": "p", "prompt": ""}]'), samples=4)


def test_unreadable_prompt_files_are_one_line(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="reads a file, not a folder"):
        read_jobs(tmp_path / "folder", fmt="txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_jobs(bad)
