"""Prompt sets: formats, output names, the seed rule, stale outputs, and data-parallel sharing between ranks (gloo, 2
processes). The presets' reference protocols are in tests/test_batch_presets.py."""
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ursa_core.batch.prompt_sets import (MANIFEST, SEED_RULE, Claims, read_jobs, read_prompt_set, run_jobs,
                                        stale_outputs)
from ursa_core.files.atomic import NAME_MAX, name_budget
from ursa_core.errors import InputError

WORKER = Path(__file__).with_name("batch_worker.py")
README = Path(__file__).resolve().parents[1] / "README.md"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, items: list) -> Path:
    return write(path, "\n".join(map(json.dumps, items)) + "\n")


def by_identity(jobs) -> dict:
    """identity#n -> (output name, prompt, seed)."""
    return {f"{j.samples[0].identity}#{j.samples[0].n}": (j.out, j.samples[0].prompt, j.samples[0].seed)
            for j in jobs}


def documented_seed(base: int, identity: str, n: int) -> int:
    """The README's formula, written out independently of ursa_core."""
    words = struct.unpack("<8I", hashlib.sha256(identity.encode()).digest())
    return int(np.random.SeedSequence(base, spawn_key=(*words, n)).generate_state(1, np.uint64)[0])


def test_seeds_and_names_follow_the_prompt_not_its_line(tmp_path):
    ab = read_jobs(write(tmp_path / "ab.txt", "a fox\na dog\n"), samples=2, seed=5)
    ba = read_jobs(write(tmp_path / "ba.txt", "a dog\na fox\n"), samples=2, seed=5)
    assert by_identity(ab) == by_identity(ba)
    assert len({j.out for j in ab}) == 4 and all(j.out.endswith(".mp4") for j in ab)
    fox = [j for j in ab if j.samples[0].prompt == "a fox"]
    assert [j.samples[0].seed for j in fox] == [documented_seed(5, "a fox\n0", n) for n in range(2)]
    assert read_jobs(tmp_path / "ab.txt", samples=2, seed=6)[0].samples[0].seed != ab[0].samples[0].seed


def test_reordering_inserting_or_deleting_items_changes_no_other_item(tmp_path):
    items = [{"prompt": f"prompt {i}", "id": f"p{i}"} for i in range(8)]
    base = by_identity(read_jobs(jsonl(tmp_path / "a.jsonl", items), samples=2))
    for edited in (items[::-1], [{"prompt": "new", "id": "new"}] + items, items[:3] + items[4:]):
        again = by_identity(read_jobs(jsonl(tmp_path / "b.jsonl", edited), samples=2))
        common = set(base) & set(again)
        assert len(common) >= 14 and all(base[k] == again[k] for k in common)
    lines = [f"prompt {i}" for i in range(10)]
    txt = by_identity(read_jobs(write(tmp_path / "a.txt", "\n".join(lines))))
    inserted = by_identity(read_jobs(write(tmp_path / "b.txt", "\n".join(["first"] + lines))))
    assert all(inserted[k] == v for k, v in txt.items()) and len(inserted) == 11


def test_repeated_prompts_are_told_apart_by_their_occurrence(tmp_path):
    jobs = read_jobs(write(tmp_path / "p.txt", "a cat\na dog\na cat\n"))
    cats = [j for j in jobs if j.samples[0].prompt == "a cat"]
    assert [j.samples[0].identity for j in cats] == ["a cat\n0", "a cat\n1"]
    assert len({j.out for j in jobs}) == 3 and len({j.samples[0].seed for j in jobs}) == 3


def test_the_readme_writes_the_seed_formula_ursa_uses():
    text = README.read_text(encoding="utf-8")
    assert "SeedSequence(entropy=base_seed" in text and "spawn_key=(*sha256(identity)" in text
    assert SEED_RULE in text


def test_jsonl_items_keep_their_seed_id_and_overrides(tmp_path):
    lines = [{"prompt": "a fox", "seed": 42, "frames": 1, "id": "fox"}, {"prompt": "a cat", "cfg": 5.0}]
    jobs = read_jobs(jsonl(tmp_path / "p.jsonl", lines), samples=2)
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
    with pytest.raises(InputError) as err:
        read_jobs(write(tmp_path / "p.jsonl", text))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("ident, message", [
    ("a\u0000b", "contains NUL (U+0000)"),
    ("../escaped", "contains '/'"),
    ("/tmp/abs", "contains '/'"),
    ("a\\b", "contains '\\\\'"),
    ("..", "names a folder"),
    ("CON", "reserved device name"),
    ("nul.tar", "reserved device name"),
    ("tab\there", "control character (U+0009)"),
])
def test_ids_that_cannot_name_a_file_are_one_line(tmp_path, ident, message):
    with pytest.raises(InputError) as err:
        read_jobs(jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "id": ident}]))
    assert message in str(err.value) and "\n" not in str(err.value) and "cannot name a file" in str(err.value)


def test_an_item_seed_leaves_room_for_its_samples(tmp_path):
    with pytest.raises(InputError, match="seed="):
        read_jobs(jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "seed": 18446744073709551615}]), samples=2)


def test_long_ids_are_shortened_with_a_stable_hash_and_keep_their_full_name(tmp_path):
    long_id = "x" * 300
    cjk = "\u732b" * 100                      # 300 bytes of UTF-8
    prompt_set = read_prompt_set(jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "id": long_id},
                                                              {"prompt": "b", "id": cjk}]), samples=2, ext=".png")
    first, _, third, _ = prompt_set.jobs
    for job, full in ((first, long_id), (third, cjk)):
        stem = job.out.rsplit("-", 1)[0]
        assert "~" in stem and len(job.out.encode()) <= name_budget(".png") < NAME_MAX
        assert job.full_name == f"{full}-0.png"
        assert stem == read_jobs(tmp_path / "p.jsonl", samples=2, ext=".png")[prompt_set.jobs.index(job)].out \
            .rsplit("-", 1)[0]                                  # stable: the same name on every read
    assert prompt_set.jobs[1].out.rsplit("-", 1)[0] == first.out.rsplit("-", 1)[0]   # one stem per item
    assert any("too long" in note for note in prompt_set.notes)
    assert cjk.startswith(third.out.split("~")[0]) and third.out.isprintable()


def _fake_render(job, target: Path, publish) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{job.samples[0].prompt}|{job.samples[0].seed}")
    publish()
    tmp.replace(target)


def test_single_process_run_resumes_without_redoing(tmp_path):
    jobs = read_jobs(write(tmp_path / "p.txt", "a\nb\nc\n"), samples=1, ext=".txt")
    rendered = []

    def render(job, target, publish):
        rendered.append(job.key)
        _fake_render(job, target, publish)
    run_jobs(jobs, tmp_path / "out", render, Claims(len(jobs)))
    (tmp_path / "out" / jobs[1].out).unlink()             # as if that output had never been finished
    report = run_jobs(jobs, tmp_path / "out", render, Claims(len(jobs)))
    assert rendered == [j.key for j in jobs] + [jobs[1].key]
    assert report.done == [jobs[1].key] and len(report.skipped) == 2
    lines = [json.loads(line) for line in (tmp_path / "out" / MANIFEST).read_text().splitlines()]
    assert [line["job"] for line in lines] == rendered and {line["seed_rule"] for line in lines} == {SEED_RULE}


def test_outputs_made_with_other_settings_or_without_a_record_are_stale(tmp_path):
    out = tmp_path / "out"
    jobs = read_jobs(write(tmp_path / "p.txt", "a\nb\n"), ext=".txt")
    run_jobs(jobs, out, _fake_render, Claims(len(jobs)), describe=lambda job: {"settings": [{"steps": 2}]})
    assert stale_outputs(jobs, out, lambda job: {"settings": [{"steps": 2}]}) == []
    stale = stale_outputs(jobs, out, lambda job: {"settings": [{"steps": 25}]})
    assert [job for job, _ in stale] == jobs and "settings[0].steps = 2 (this run: 25)" in stale[0][1]
    other_seed = read_jobs(tmp_path / "p.txt", ext=".txt", seed=1)
    assert "seed" in stale_outputs(other_seed, out, lambda job: {"settings": [{"steps": 2}]})[0][1]
    rendered = []
    run_jobs(jobs, out, lambda job, target, publish: (rendered.append(job.key), _fake_render(job, target, publish)),
             Claims(len(jobs)), describe=lambda job: {"settings": [{"steps": 25}]})
    assert rendered == [j.key for j in jobs]                 # stale outputs are regenerated, never kept


def test_an_output_without_its_manifest_line_never_counts_as_finished(tmp_path):
    out = tmp_path / "out"
    jobs = read_jobs(write(tmp_path / "p.txt", "a\n"), ext=".txt")
    out.mkdir()
    (out / jobs[0].out).write_text("made by hand")
    assert "no manifest line" in stale_outputs(jobs, out)[0][1]
    (out / MANIFEST).write_text(json.dumps({"job": jobs[0].key, "out": jobs[0].out, "samples": []}) + "\n")
    assert "before seeds followed the item" in stale_outputs(jobs, out)[0][1]   # a manifest of the old rule


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


def test_unreadable_prompt_files_are_one_line(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="reads a file, not a folder"):
        read_jobs(tmp_path / "folder", fmt="txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_jobs(bad)
