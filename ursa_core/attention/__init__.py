"""Attention kernels by name: the registry every layer looks its backend up in (backends.py), and the Ulysses
sequence-parallel backend that wraps another kernel (ulysses.py)."""
