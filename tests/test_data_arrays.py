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


def test_the_npy_header_keeps_the_data_aligned_to_64_bytes(tmp_path):
    from mt_cli.data.arrays import ArrayWriter

    for n in (0, 3, 100_000):
        writer = ArrayWriter(tmp_path / f"a{n}.npy", np.int32)
        writer.append(np.arange(n, dtype=np.int32))
        writer.close()
        with open(tmp_path / f"a{n}.npy", "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            assert f.tell() % 64 == 0 and shape == (n,) and dtype == np.int32  # the format's alignment rule
        assert np.load(tmp_path / f"a{n}.npy").tolist() == list(range(n))
