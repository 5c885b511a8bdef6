"""Several ranks of torch.distributed sharing one generation (CFG parallel and Ulysses sequence parallel)."""
