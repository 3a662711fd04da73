"""`mt serve` as users meet it: the real server on a free local port, concurrent clients over real HTTP,
bad requests answered with a 4xx JSON error while the server keeps serving, and a clean SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from trained_tiny import trained_tiny

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(real_lines):
    tiny = trained_tiny(real_lines)
    port = free_port()
    cmd = [sys.executable, "-m", "mt_cli", "serve", "--checkpoint", str(tiny.path), "--port", str(port)]
    cmd += ["--device", "cpu", "--max-lines", "8", "--max-chars", "300", "--max-batch", "32", "--max-wait-ms", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the server did not come up: {proc.communicate()[0][-2000:]}")
    yield tiny, url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_concurrent_clients_get_their_own_lines_translated_in_order(server):
    tiny, url, _ = server
    # each client sends its own slice; the reference is the model's greedy output computed without the server
    slices = [list(range(i, len(tiny.src), 8))[:5] for i in range(8)]

    def ask(rows):
        r = httpx.post(f"{url}/translate", json={"text": [tiny.src[k] for k in rows], "beam": 1}, timeout=60)
        return r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, slices))
    for rows, (status, body) in zip(slices, answers):
        assert status == 200, body
        assert body["translations"] == [tiny.greedy[k] for k in rows]
    distinct = {t for _, body in answers for t in body["translations"]}
    assert len(distinct) > 10  # a model that says one thing to everything would hide a mix-up


def test_nbest_empty_lines_and_the_info_and_health_endpoints(server):
    tiny, url, _ = server
    r = httpx.post(f"{url}/translate", json={"text": [tiny.src[0], "", "  "], "beam": 3, "nbest": 2}, timeout=60)
    assert r.status_code == 200, r.text
    best = r.json()["translations"]
    assert len(best) == 3 and all(len(n) == 2 for n in best)
    assert best[1] == ["", ""] and best[2] == ["", ""]
    info = httpx.get(f"{url}/info").json()
    assert (info["src_lang"], info["tgt_lang"], info["engine"]) == ("de", "en", "pytorch")
    assert info["limits"]["max_lines"] == 8
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "body,status,names",
    [
        (b'{"text": ["ein Hund"', 422, "json"),  # malformed JSON
        ({"text": "ein Hund"}, 422, "text"),  # a string, not a list
        ({"text": ["ein Hund", 7]}, 422, "text.1"),
        ({"text": ["ein Hund"], "beam": "5"}, 422, "beam"),
        ({"text": ["ein Hund"], "colour": "red"}, 422, "colour"),
        ({"text": ["ein Hund"] * 9}, 413, "at most 8"),
        ({"text": ["ein Hund " * 40]}, 413, "text[0]"),
        ({"text": ["ein Hund"], "src_lang": "fr"}, 400, "'fr'"),
        ({"text": ["ein Hund"], "beam": 0}, 422, "beam"),
        ({"text": ["ein Hund"], "beam": 2, "nbest": 3}, 422, "nbest"),
    ],
)
def test_bad_requests_get_a_4xx_json_error_naming_the_problem(server, body, status, names):
    tiny, url, _ = server
    if isinstance(body, bytes):
        r = httpx.post(f"{url}/translate", content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{url}/translate", json=body)
    assert r.status_code == status, r.text
    assert names.lower() in r.json()["error"].lower()
    good = httpx.post(f"{url}/translate", json={"text": [tiny.src[3]], "beam": 1}, timeout=60)
    assert good.json()["translations"] == [tiny.greedy[3]]  # and the server goes on serving


def test_sigterm_shuts_the_server_down_cleanly(server):
    _, url, proc = server
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert f"on {url}" in out  # it said where it listened: the loopback address unless told otherwise
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


def test_serve_without_a_checkpoint_file_is_one_line(tmp_path, monkeypatch, capsys):
    from conftest import run_main

    code, _, err = run_main(monkeypatch, capsys, "serve", "--checkpoint", str(tmp_path / "none.pt"))
    assert code == 2 and err.count("\n") == 1 and "none.pt" in err
