"""One rank of a data-parallel batch run for tests/test_batch.py: a fake renderer (no model) that takes longer on
rank 1, writes each output atomically, and can die in the middle of a job (URSA_TEST_DIE_AT=<job number>)."""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ursa_core.batch.prompt_sets import Claims, read_jobs, run_jobs  # noqa: E402
from ursa_core.parallel.distributed import barrier, finish, init_from_env, join_launch  # noqa: E402


def main(prompts: str, out: str) -> None:
    session = join_launch()
    rank = init_from_env("cpu", session)[0]
    jobs = read_jobs(prompts, samples=2, ext=".txt")
    die_at = int(os.environ.get("URSA_TEST_DIE_AT", "-1"))
    started = []

    def render(job, target: Path, publish) -> None:
        started.append(job.key)
        time.sleep(0.02 if rank == 0 else 0.09)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(f"{job.samples[0].prompt}|{job.samples[0].seed}")
        if rank == 1 and len(started) == die_at:
            os._exit(9)   # killed between writing and renaming: the output must not count as finished
        publish()
        tmp.replace(target)

    run_jobs(jobs, out, render, Claims(len(jobs), session.store), rank=rank)
    barrier()
    finish(session)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
