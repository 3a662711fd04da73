"""mt_cli.data.arrays: row lengths stay int16 while there is room for <eos> and bucket rounding (below 30,000
tokens) and widen to int32 from there, and an empty array maps to no rows."""

from __future__ import annotations

import numpy as np
import pytest

from mt_cli.data.arrays import MappedArray, OffsetsWriter, row_lengths


def _offsets(path, lengths):
    writer = OffsetsWriter(path)
    writer.add_lengths(np.array(lengths, np.int64))
    writer.close()
    return path


@pytest.mark.parametrize("longest, dtype", [(29_999, np.int16), (30_000, np.int32), (70_000, np.int32)])
def test_row_lengths_widen_before_int16_runs_out_of_room(tmp_path, longest, dtype):
    lengths = [5, longest, 7, 0]
    got = row_lengths(_offsets(tmp_path / "o.npy", lengths))
    assert got.dtype == dtype and got.tolist() == lengths


def test_long_rows_after_the_first_block_widen_the_earlier_ones_too(tmp_path):
    lengths = [3] * 10 + [40_000] + [2] * 5
    got = row_lengths(_offsets(tmp_path / "o.npy", lengths), chunk=4)  # the long row comes in the third block
    assert got.dtype == np.int32 and got.tolist() == lengths


def test_an_empty_array_has_no_rows(tmp_path):
    path = _offsets(tmp_path / "o.npy", [])
    assert row_lengths(path).tolist() == [] and MappedArray(path).array.tolist() == [0]


def test_a_file_that_is_no_npy_array_is_named(tmp_path):
    from mt_cli.data.sources import DataError

    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=f"^{tmp_path / 'bad.npy'}: "):
        MappedArray(tmp_path / "bad.npy")
