"""One rank of a parallel generation for tests/test_parallel.py (gloo, env:// as torchrun sets it): loads the tiny
checkpoint with an 8-query / 4-KV-head transformer (so 2 or 4 sequence ranks get whole KV groups), samples with
`--parallel MODE` (a text-to-video clip, or with a fourth argument `mask` a repaint of it), and rank 0 saves
the tokens. Bad layouts print the one-line error and exit 2."""
import contextlib
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ursa_core.errors import InputError  # noqa: E402
from ursa_core.parallel.distributed import build_layout  # noqa: E402
from ursa_core.sampling.generate import generate  # noqa: E402

from parallel_fixtures import KV_HEADS, SAMPLING, masked_inputs, two_kv_head_model  # noqa: E402


@contextlib.contextmanager
def counted_collectives():
    """Count the all_gather / all_to_all_single calls the generation makes (a one-item list, read after)."""
    calls = [0]
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_to_all_single")}

    def counting(collective):
        def call(*args, **kwargs):
            calls[0] += 1
            return collective(*args, **kwargs)
        return call
    for name, collective in originals.items():
        setattr(dist, name, counting(collective))
    try:
        yield calls
    finally:
        for name, collective in originals.items():
            setattr(dist, name, collective)


def main(tiny_dir: str, mode: str, out: str, task: str = "text") -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        try:  # the layout rule first: a bad one costs no model load
            layout = build_layout(mode, KV_HEADS)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        model = two_kv_head_model(tiny_dir)
        repaint = {}
        if task == "mask":  # a repaint: held tokens, tokens sampled on one rank only
            starts, given = masked_inputs(model.codebook_size)
            repaint = dict(schedule=starts, given_tokens=given)
        with counted_collectives() as calls:
            tokens = generate(model, "a red fox", parallel=layout, **SAMPLING, **repaint).tokens
        print(f"collectives {calls[0]}")
        gathered = [torch.empty_like(tokens) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tokens)
        if dist.get_rank() == 0:
            torch.save(torch.stack(gathered), out)
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
