"""mt_cli.data.stream's small parts, each against what it promises: ordered_map runs where it is told,
an unreadable input is named, invalid UTF-8 is located by line and byte, a byte-order mark goes only on line 1."""

from __future__ import annotations

import os
import socket

import pytest

from mt_cli.data.sources import DataError
from mt_cli.data.stream import LineBlocks, decode_side, ordered_map


def _pid(_task) -> int:
    return os.getpid()


@pytest.mark.parametrize("workers, processes, elsewhere", [(1, None, False), (1, True, True), (2, False, False),
                                                           (2, None, True)])  # fmt: skip
def test_ordered_map_runs_in_this_process_or_in_workers_as_told(workers, processes, elsewhere):
    inits = []
    pids = list(ordered_map(_pid, iter(range(5)), workers, inits.append, "arg", processes=processes))
    assert len(pids) == 5
    assert all(p != os.getpid() for p in pids) if elsewhere else pids == [os.getpid()] * 5
    assert inits == ([] if elsewhere else ["arg"])  # the initializer ran where the work ran


def _square(x: int) -> int:
    return x * x


def test_ordered_map_keeps_the_order_of_its_tasks():
    assert list(ordered_map(_square, iter(range(50)), 2, lambda _: None, None)) == [x * x for x in range(50)]


def test_an_input_that_cannot_be_opened_is_named(tmp_path):
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))  # a path that exists, is no folder, and cannot be opened as a file
    try:
        with pytest.raises(DataError, match=f"^{path}: cannot read \\("):
            LineBlocks(path)
    finally:
        server.close()


def test_invalid_utf8_is_located_by_line_and_byte():
    blob = b"first\nab\xffc\nthird\n"
    with pytest.raises(DataError, match=r"^in\.txt:11: invalid UTF-8 at byte 2; convert the text to UTF-8$"):
        decode_side(blob, 3, 10, "in.txt")  # the blob's first line is line 10 of the file


def test_a_byte_order_mark_is_dropped_from_the_files_first_line_only():
    blob = "\ufeffa\n\ufeffb\n".encode()
    assert decode_side(blob, 2, 1, "f") == ["a", "\ufeffb"]
    assert decode_side(blob, 2, 7, "f") == ["\ufeffa", "\ufeffb"]  # a later block: its first line is not line 1
    assert decode_side(b"x\r\ny\r\n", 2, 1, "f") == ["x", "y"]


def test_a_missing_input_is_named(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'no.tsv'}: file not found$"):
        LineBlocks(tmp_path / "no.tsv")
