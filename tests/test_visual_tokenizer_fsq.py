import math

import torch

from ursa_core.visual_tokenizer import fsq
from ursa_core.visual_tokenizer.loading import fsq_table_matches


def _independent_table() -> torch.Tensor:
    """Code table from first principles in float64: digit d of a channel with L levels -> (d - L//2) / (L//2)."""
    rows = []
    for index in range(64000):
        row, rest = [], index
        for levels in fsq.FSQ_LEVELS:  # channel 0 is the least significant digit
            digit, rest = rest % levels, rest // levels
            row.append((digit - levels // 2) / (levels // 2))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def test_code_table_matches_independent_float64():
    table = fsq.code_table(dtype=torch.float64)
    assert table.shape == (64000, 6)
    assert torch.equal(table, _independent_table())
    assert fsq.codebook_size() == 64000
    assert torch.equal(table[32036], torch.zeros(6, dtype=torch.float64))  # the all-zero code (spec §3.1)


def _raw_value_for(codes: torch.Tensor) -> torch.Tensor:
    """Invert the bound: the pre-tanh z whose bounded value is exactly the code's integer digit offset."""
    levels = torch.tensor(fsq.FSQ_LEVELS, dtype=torch.float64)
    half_width = torch.floor(levels / 2)
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half_l)
    rounded = codes * half_width  # integer in [-L//2, L//2 - (1 if even)]
    return torch.atanh((rounded + offset) / half_l) - shift


def test_every_index_survives_dequantize_quantize():
    ids = torch.arange(64000).view(1, 64000)
    codes = fsq.dequantize(ids, dtype=torch.float64)  # [1, 6, 64000]
    z = _raw_value_for(codes.movedim(1, -1)).movedim(-1, 1)
    assert torch.equal(fsq.quantize(z), ids)
    assert torch.equal(fsq.quantize(z.float()), ids)  # also in the float32 path the model uses


def test_quantize_layout_and_range():
    z = torch.randn(2, 6, 3, 4, 5) * 3
    ids = fsq.quantize(z)
    assert ids.shape == (2, 3, 4, 5) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 64000
    codes = fsq.dequantize(ids)
    assert codes.shape == (2, 6, 3, 4, 5)
    assert torch.equal(fsq.quantize(_raw_value_for(codes.movedim(1, -1).double()).movedim(-1, 1)), ids)
    # Huge inputs saturate at the outermost levels, never past them.
    assert torch.equal(fsq.quantize(torch.full((1, 6, 1), 1e4)), torch.tensor([[63999]]))
    assert torch.equal(fsq.quantize(torch.full((1, 6, 1), -1e4)), torch.tensor([[0]]))


def test_fsq_table_matches():
    table = fsq.code_table()
    assert fsq_table_matches(table, table.half())
    assert not fsq_table_matches(table, table[:-1])
    assert not fsq_table_matches(table, table.flip(0))
    assert math.isclose(float(table.abs().max()), 1.0)
