"""Getting Multi30k: verified copies from a folder, downloads over real HTTP (a server on localhost standing
in for the official host), and one-line errors for a missing folder, a corrupt file or no network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from mt_cli.data import sources
from mt_cli.data.sources import DataError, fetch_multi30k, multi30k_source, multi30k_splits

NAME = "val.de.gz"  # 1014 lines, small enough to serve and copy in a test


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on a free local port serving tmp_path/www; MULTI30K_URL points at it."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(sources, "MULTI30K_URL", f"http://127.0.0.1:{httpd.server_address[1]}/{{file}}")
    monkeypatch.delenv(sources.MULTI30K_ENV, raising=False)
    yield www
    httpd.shutdown()
    httpd.server_close()


def test_the_official_checksums_are_those_of_the_files(multi30k_dir):
    assert sha256(multi30k_dir / NAME) == sources.MULTI30K_SHA256[NAME]


def test_a_download_is_verified_and_complete(server, multi30k_dir, tmp_path):
    (server / NAME).write_bytes((multi30k_dir / NAME).read_bytes())
    raw = tmp_path / "raw"
    assert fetch_multi30k([NAME], raw, None) == {NAME: sources.MULTI30K_SHA256[NAME]}
    assert (raw / NAME).read_bytes() == (multi30k_dir / NAME).read_bytes()
    assert leftovers(raw) == [NAME]  # no temporary file left


def test_a_corrupt_download_is_named_and_removed(server, multi30k_dir, tmp_path):
    data = bytearray((multi30k_dir / NAME).read_bytes())
    data[100] ^= 1
    (server / NAME).write_bytes(bytes(data))
    got, want = hashlib.sha256(data).hexdigest(), sources.MULTI30K_SHA256[NAME]
    with pytest.raises(DataError) as err:
        fetch_multi30k([NAME], tmp_path / "raw", None)
    assert str(err.value) == (
        f"download: {NAME} has SHA-256 {got[:12]}…, expected {want[:12]}…; the file is corrupt or not the official one"
    )
    assert leftovers(tmp_path / "raw") == []


def test_no_network_is_one_line_saying_what_to_do(server, tmp_path):
    url = sources.MULTI30K_URL.format(file=NAME)  # the server has no such file: HTTP 404
    with pytest.raises(DataError) as err:
        fetch_multi30k([NAME], tmp_path / "raw", None)
    message = str(err.value)
    assert message.startswith(f"cannot download {url} (") and "\n" not in message
    assert message.endswith("); offline, pass --source DIR or set MT_MULTI30K_DIR")
    assert leftovers(tmp_path / "raw") == []


def test_a_server_that_never_answers_times_out(tmp_path, monkeypatch):
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def accept_and_stall() -> None:  # takes the connection, reads nothing, answers nothing
        connection, _ = listener.accept()
        release.wait(10)
        connection.close()

    threading.Thread(target=accept_and_stall, daemon=True).start()
    monkeypatch.setattr(sources, "MULTI30K_URL", f"http://127.0.0.1:{listener.getsockname()[1]}/{{file}}")
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.delenv(sources.MULTI30K_ENV, raising=False)
    try:
        with pytest.raises(DataError, match="timed out"):  # without a timeout: a hang, then "closed connection"
            fetch_multi30k([NAME], tmp_path / "raw", None)
    finally:
        release.set()
        listener.close()
    assert leftovers(tmp_path / "raw") == []


def test_a_folder_from_the_environment_is_copied_and_a_corrupt_copy_replaced(multi30k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(sources.MULTI30K_ENV, str(multi30k_dir))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / NAME).write_bytes(b"not the file")
    fetch_multi30k([NAME], raw, None)
    assert sha256(raw / NAME) == sources.MULTI30K_SHA256[NAME]
    # a verified copy is kept as it is: no second copy
    before = (raw / NAME).stat().st_mtime_ns
    monkeypatch.setenv(sources.MULTI30K_ENV, str(tmp_path / "nowhere"))
    fetch_multi30k([NAME], raw, None)
    assert (raw / NAME).stat().st_mtime_ns == before


def test_a_missing_source_folder_or_file_is_one_line(multi30k_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(sources.MULTI30K_ENV, raising=False)
    with pytest.raises(DataError) as err:
        multi30k_source(str(tmp_path / "nowhere"))
    assert str(err.value) == (
        f"{tmp_path / 'nowhere'}: no such folder; --source (or MT_MULTI30K_DIR) names the folder holding the "
        "Multi30k .gz files"
    )
    monkeypatch.setenv(sources.MULTI30K_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere: no such folder"):
        multi30k_source(None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{NAME}: missing; the folder must hold the Multi30k task-1 raw files"):
        fetch_multi30k([NAME], tmp_path / "raw", str(empty))


def test_splits_are_those_both_languages_have():
    every = ["train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"]
    assert multi30k_splits("de", "en") == multi30k_splits("en", "fr") == every
    assert multi30k_splits("cs", "en") == multi30k_splits("en", "cs") == every[:3]  # Czech has no 2017 tests


def test_a_user_split_is_a_tsv_or_a_pair_of_files(tmp_path):
    from mt_cli.data.sources import read_split_files

    (tmp_path / "a.tsv").write_text("ein Hund\ta dog\nzwei\ttwo\n", encoding="utf-8")
    assert read_split_files(str(tmp_path / "a.tsv"), "de", "en") == (["ein Hund", "zwei"], ["a dog", "two"])
    (tmp_path / "b.de").write_text("eins\nzwei\n", encoding="utf-8")
    (tmp_path / "b.en").write_text("one\ntwo\n", encoding="utf-8")
    assert read_split_files(str(tmp_path / "b"), "de", "en") == (["eins", "zwei"], ["one", "two"])
    (tmp_path / "c.tsv").write_text("a\tb\nc\td\te\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_split_files(str(tmp_path / "c.tsv"), "de", "en")
    assert str(err.value) == f"{tmp_path / 'c.tsv'}:2: expected 2 tab-separated columns, found 3"


def test_a_tsv_split_is_one_file_even_before_it_exists(tmp_path):
    from mt_cli.data.sources import split_files

    assert split_files(str(tmp_path / "train.tsv"), "de", "en") == [tmp_path / "train.tsv"]  # named if missing
    assert split_files(str(tmp_path / "train"), "de", "en") == [tmp_path / "train.de", tmp_path / "train.en"]


def test_temporary_folders_are_hidden_and_distinct(tmp_path):
    from mt_cli.data.sources import fresh_tempdir

    a, b = fresh_tempdir(tmp_path / "root"), fresh_tempdir(tmp_path / "root")
    assert a != b and a.parent == b.parent == tmp_path / "root"
    assert a.name.startswith(".tmp-") and b.name.startswith(".tmp-")  # hidden, and recognisable as a leftover


def test_read_lines_names_a_missing_file_and_drops_a_byte_order_mark(tmp_path):
    from mt_cli.data.sources import read_lines

    with pytest.raises(DataError, match=f"^{tmp_path / 'no.txt'}: file not found$"):
        read_lines(tmp_path / "no.txt")
    (tmp_path / "bom.txt").write_bytes("\ufeffeins\n\ufeffzwei\r\n".encode())
    assert read_lines(tmp_path / "bom.txt") == ["eins", "\ufeffzwei"]  # line 1's mark is not text
    # only line ends go: trailing spaces and tabs are the text's (a TSV's empty last column is a tab)
    (tmp_path / "ends.txt").write_bytes(b"ein Hund \t\r\nzwei\t\n drei\r\n")
    assert read_lines(tmp_path / "ends.txt") == ["ein Hund \t", "zwei\t", " drei"]
