"""Streaming `mt translate`: chunked reading with bounded lines, output in input order chunk by chunk (checked
with a model that has memorized real pairs, so each line has its own translation), stdout written before the
input ends, and a named output file that is complete or absent."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from trained_tiny import trained_tiny

from mt_cli.data.sources import DataError
from mt_cli.translate import read_chunks, translate_lines, translate_stream

CPU = torch.device("cpu")
SAFETY_S = 300  # a guard against hanging forever, not a speed requirement


@pytest.fixture(scope="module")
def tiny(real_lines):
    return trained_tiny(real_lines)


@pytest.fixture(scope="module")
def memorized(tiny):
    """(source, translation) pairs whose greedy output, decoded here directly, is the reference itself."""
    lowercase = tiny.cfg.data.lowercase
    pairs = [(s, g) for s, g, t in zip(tiny.src, tiny.greedy, tiny.tgt) if g == (t.lower() if lowercase else t)]
    assert len(pairs) >= 30 and len({g for _, g in pairs}) == len(pairs)
    return pairs


def mixed_lines(memorized, n: int = 23):
    """Real lines with empty and blank lines between them, and what each must become."""
    lines, want = [], []
    for i, (src, tgt) in enumerate(memorized[:n]):
        lines.append(src)
        want.append(tgt)
        if i % 4 == 1:
            lines += ["", "   "]
            want += ["", ""]
    return lines, want


def chunks_of(data: bytes, **kw) -> list[list[str]]:
    r, w = os.pipe()
    with os.fdopen(w, "wb") as f:
        f.write(data)
    with os.fdopen(r, "rb") as f:
        return list(read_chunks(f, "test", **kw))


# --- reading -------------------------------------------------------------------------------------


def test_chunks_keep_every_line_in_order_with_bom_crlf_and_empty_lines():
    data = "\ufeffa\r\nb\n\n  \nc\nd\ne".encode()
    assert chunks_of(data, chunk_lines=2) == [["a", "b"], ["", "  "], ["c", "d"], ["e"]]
    assert chunks_of(data, chunk_lines=100) == [["a", "b", "", "  ", "c", "d", "e"]]
    assert chunks_of(b"") == []
    assert chunks_of(b"x\n" * 5, chunk_lines=10, chunk_bytes=4) == [["x", "x"], ["x", "x"], ["x"]]


def test_a_line_over_the_limit_is_an_error_naming_it():
    assert chunks_of(b"ok\n" + b"y" * 10 + b"\r\n", max_line_bytes=10) == [["ok", "y" * 10]]
    with pytest.raises(DataError, match=r"^test:2: line longer than 10 bytes"):
        chunks_of(b"ok\n" + b"y" * 11 + b"\n", max_line_bytes=10)
    with open("/dev/zero", "rb") as zero:  # endless input with no line end: one bounded read, then the error
        with pytest.raises(DataError, match=r"^/dev/zero:1: line longer than 1,000 bytes"):
            next(read_chunks(zero, "/dev/zero", max_line_bytes=1000))


def test_invalid_utf8_names_the_line_of_the_file_not_of_the_chunk():
    with pytest.raises(DataError, match=r"^test:5: invalid UTF-8 at byte 1"):
        chunks_of(b"a\nb\nc\nd\nx\xff\n", chunk_lines=2)


def test_a_chunk_is_yielded_before_the_next_one_is_written():
    """The writer sends the second chunk only once the first has come out: a reader that reads ahead would
    wait for it until the writer gives up and closes the pipe."""
    r, w = os.pipe()
    got_first = threading.Event()
    seen_before_close = []

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(b"one\ntwo\n")
            f.flush()
            seen_before_close.append(got_first.wait(SAFETY_S))
            f.write(b"three\n")

    t = threading.Thread(target=writer)
    t.start()
    with os.fdopen(r, "rb") as f:
        chunks = read_chunks(f, "pipe", chunk_lines=2)
        assert next(chunks) == ["one", "two"]
        got_first.set()
        assert list(chunks) == [["three"]]
    t.join()
    assert seen_before_close == [True]


# --- translating -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_lines", [1, 3, 7, 1000])
def test_stream_output_is_each_line_translation_in_order(tiny, memorized, chunk_lines):
    lines, want = mixed_lines(memorized)
    pieces: list[str] = []
    chunks = (lines[i : i + chunk_lines] for i in range(0, len(lines), chunk_lines))
    n = translate_stream(tiny.model, tiny.cfg, tiny.codecs, chunks, pieces.append, CPU, beam_size=1)
    assert n == len(lines)
    assert len(pieces) == -(-len(lines) // chunk_lines)  # one write per chunk
    assert "".join(pieces) == "".join(w + "\n" for w in want)


def test_nbest_and_beam_do_not_depend_on_the_chunking(tiny, memorized):
    lines, _ = mixed_lines(memorized, 12)
    whole = translate_lines(tiny.model, tiny.cfg, tiny.codecs, lines, CPU, beam_size=3, nbest=2)
    pieces: list[str] = []
    chunks = (lines[i : i + 5] for i in range(0, len(lines), 5))
    translate_stream(tiny.model, tiny.cfg, tiny.codecs, chunks, pieces.append, CPU, beam_size=3, nbest=2)
    rows = "".join(pieces).split("\n")[:-1]
    assert rows == ["\t".join(h) for h in whole]
    assert all(r.count("\t") == 1 for r in rows)


def test_attention_items_carry_file_line_numbers(tiny, memorized):
    lines, want = mixed_lines(memorized, 6)
    seen: list = []
    translate_stream(
        tiny.model,
        tiny.cfg,
        tiny.codecs,
        (lines[i : i + 4] for i in range(0, len(lines), 4)),
        lambda text: None,
        CPU,
        beam_size=1,
        on_chunk=seen.extend,
    )
    assert [n for n, _, _ in seen] == [i + 1 for i, line in enumerate(lines) if line.strip()]
    for n, src_ids, hyp_ids in seen:
        assert src_ids == tiny.codecs["src"].encode([lines[n - 1]])[0]
        assert tiny.codecs["tgt"].decode(hyp_ids) == want[n - 1]


# --- the command -------------------------------------------------------------------------------


def mt_process(*args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mt_cli", *map(str, args)],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def line_reader(stream):
    """Lines of `stream` as they arrive, read on a thread; get(timeout) never waits forever."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in iter(stream.readline, b"")] + [lines.put(b"")], daemon=True
    ).start()
    return lambda: lines.get(timeout=SAFETY_S)


def test_stdout_gets_each_chunk_before_the_input_ends(tiny, memorized, tmp_path):
    p = mt_process(
        "translate", "--checkpoint", tiny.path, "--device", "cpu", "--beam", "1", "--chunk-lines", 2, cwd=tmp_path
    )
    try:
        (a, ta), (b, tb), (c, tc) = memorized[:3]
        p.stdin.write(f"{a}\n{b}\n".encode())
        p.stdin.flush()
        next_line = line_reader(p.stdout)
        # the input stays open: these lines can only come from the first chunk alone
        assert [next_line(), next_line()] == [f"{ta}\n".encode(), f"{tb}\n".encode()]
        p.stdin.write(f"\n{c}\n".encode())
        p.stdin.close()
        rest = [next_line(), next_line(), next_line()]
        assert p.wait(SAFETY_S) == 0, p.stderr.read()
    finally:
        p.kill()
    assert rest == [b"\n", f"{tc}\n".encode(), b""]


def test_a_reader_that_goes_away_stops_the_run_quietly(tiny, memorized, tmp_path):
    """`mt translate -i big | head -1`: once stdout's reader is gone the run stops (it does not translate the
    rest of the file), without a traceback or an error line, with click's exit status 1 for a broken pipe."""
    n = 2_000
    (tmp_path / "in.de").write_text("".join(f"{memorized[i % 30][0]}\n" for i in range(n)), encoding="utf-8")
    p = mt_process(
        "translate", "--checkpoint", tiny.path, "-i", "in.de", "--device", "cpu", "--beam", "1",
        "--chunk-lines", 10, cwd=tmp_path,
    )  # fmt: skip
    guard = threading.Timer(SAFETY_S, p.kill)  # a hung process is killed, so the read below returns
    guard.start()
    try:
        p.stdin.close()
        assert p.stdout.readline() == f"{memorized[0][1]}\n".encode()
        p.stdout.close()
        code = p.wait(SAFETY_S)
        err = p.stderr.read().decode()
    finally:
        guard.cancel()
        p.kill()
    assert code == 1 and "Traceback" not in err and "error" not in err, err
    done = [int(x.split()[0]) for x in err.replace("\r", "\n").splitlines() if x.strip().endswith("lines/s]")]
    assert done and max(done) < n // 2  # the progress bar: it stopped well before the end


def test_a_failed_run_leaves_no_output_file(tiny, memorized, tmp_path):
    (tmp_path / "in.de").write_bytes("".join(f"{s}\n" for s, _ in memorized[:4]).encode() + b"bad \xff\n")
    (tmp_path / "old.en").write_text("keep me\n")
    for out in ("new.en", "old.en"):
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "mt_cli",
                "translate",
                "--checkpoint",
                str(tiny.path),
                "-i",
                "in.de",
                "-o",
                out,
                "--device",
                "cpu",
                "--chunk-lines",
                "2",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=SAFETY_S,
        )
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1] == "error: in.de:5: invalid UTF-8 at byte 4; convert the text to UTF-8"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.de", "old.en"]  # no new.en, no temporary file
    assert (tmp_path / "old.en").read_text() == "keep me\n"


def test_sigterm_leaves_no_torn_output_file(tiny, memorized, tmp_path):
    p = mt_process(
        "translate", "--checkpoint", tiny.path, "--device", "cpu", "-o", "out.en", "--chunk-lines", 1, cwd=tmp_path
    )
    try:
        p.stdin.write(f"{memorized[0][0]}\n{memorized[1][0]}\n".encode())
        p.stdin.flush()
        temps = []
        for _ in range(SAFETY_S * 10):  # until the first chunk is in the temporary file
            temps = [t for t in tmp_path.glob(".out.en.*") if t.stat().st_size > 0]
            if temps or p.poll() is not None:
                break
            time.sleep(0.1)
        assert temps, p.stderr.read() if p.poll() is not None else "no temporary output file"
        p.send_signal(signal.SIGTERM)
        assert p.wait(SAFETY_S) == 130
    finally:
        p.kill()
    assert list(tmp_path.iterdir()) == []
    assert p.stderr.read().decode().strip().splitlines()[-1] == "interrupted"


def test_bad_options_exit_2_before_the_model_loads(tiny, tmp_path):
    for args, msg in (
        (["--chunk-lines", "0"], "--chunk-lines 0"),
        (["--sample", "topk:0"], "--sample topk:0"),
        (["--sample", "topk:2", "--beam", "3"], "takes no --beam"),
        (["-i", "missing.de"], "missing.de: file not found"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "mt_cli", "translate", "--checkpoint", str(tiny.path), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=SAFETY_S,
            input="",
        )
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and msg in p.stderr, p.stderr
