"""One rank of a data-parallel batch run for tests/test_batch.py: a fake renderer (no model) that takes longer on
rank 1, writes each output atomically, and can die in the middle of a job (URSA_TEST_DIE_AT=<job number>)."""
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ursa_core.batch.prompt_sets import Claims, distributed_store, read_jobs, run_jobs  # noqa: E402


def main(prompts: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    jobs = read_jobs(prompts, samples=2, ext=".txt")
    die_at = int(os.environ.get("URSA_TEST_DIE_AT", "-1"))
    started = []

    def render(job, target: Path) -> None:
        started.append(job.key)
        time.sleep(0.02 if rank == 0 else 0.09)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(f"{job.samples[0].prompt}|{job.samples[0].seed}")
        if rank == 1 and len(started) == die_at:
            os._exit(9)   # killed between writing and renaming: the output must not count as finished
        tmp.replace(target)

    run_jobs(jobs, out, render, Claims(len(jobs), distributed_store()), rank=rank)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
