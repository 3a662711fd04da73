"""Helpers for the reliability tests (test_train, test_checkpoint, test_atomic, test_distributed):
a small prepared corpus sliced from the real Multi30k files, and `mt` runs in subprocesses."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

MULTI30K = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
RUN = "rel"  # the runs' name: saved/rel/, result/rel/

# timing fields differ between any two runs; everything else in a metrics line must match exactly
TIMING = {"seconds", "val_seconds", "tokens_per_s", "tgt_tokens_per_s", "elapsed", "train_seconds", "total_seconds"}


def make_corpus(folder: Path, n_train: int = 240, n_eval: int = 40) -> Path:
    """Slice the real Multi30k de-en files into TSVs, write a tiny-model config for them, prepare the
    corpus; returns the config path. Training on it: 22 batches per epoch, ~20 ms per step on one core."""
    if not (MULTI30K / "train.de.gz").is_file():
        from conftest import missing_multi30k

        missing_multi30k()
    from mt_cli.config import load_config
    from mt_cli.data.prepare import prepare_corpus

    folder.mkdir(parents=True, exist_ok=True)

    def lines(name):
        with gzip.open(MULTI30K / name, "rt", encoding="utf-8") as f:
            return f.read().splitlines()

    for split, src, n in (("train", "train", n_train), ("valid", "val", n_eval), ("test", "test_2016_flickr", n_eval)):
        de, en = lines(f"{src}.de.gz")[:n], lines(f"{src}.en.gz")[:n]
        (folder / f"{split}.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in zip(de, en)), encoding="utf-8")
    cfg_path = folder / "rel.yaml"
    cfg_path.write_text(
        f"""name: {RUN}
data: {{corpus: files, root: {folder / "data"}, train: {folder / "train.tsv"}, valid: {folder / "valid.tsv"},
        test: [{folder / "test.tsv"}], min_freq: 1}}
model: {{d_model: 32, n_heads: 2, enc_layers: 1, dec_layers: 1, d_ff: 64, dropout: 0.1}}
train: {{epochs: 2, max_tokens: 256, lr: 1.0e-3, scheduler: constant, val_bleu: true, save_every: 0}}
decode: {{beam_size: 2, batch_size: 256}}
""",
        encoding="utf-8",
    )
    prepare_corpus(load_config(cfg_path).data, log=lambda *_: None)
    return cfg_path


def env() -> dict:
    e = dict(os.environ)
    # one thread per process: the same float summation order in every run, and no oversubscription
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def mt_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "mt_cli", *map(str, args)]


def mt(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(mt_cmd(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def popen(cmd: list[str], cwd: Path, group: bool = False) -> subprocess.Popen:
    """Start `cmd`; with group=True in its own process group (torchrun and its workers), which
    `signal_run` then signals as a whole, like a terminal's Ctrl-C or a cluster scheduler does."""
    return subprocess.Popen(
        cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group
    )


def signal_run(p: subprocess.Popen, sig: int) -> None:
    if os.getpgid(p.pid) == p.pid:  # a group of its own
        os.killpg(p.pid, sig)
    else:
        os.kill(p.pid, sig)


def torchrun_cmd(nproc: int, *args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "mt_cli",
        *map(str, args),
    ]


def pause_at_checkpoint(p: subprocess.Popen, last: Path, want, timeout: float = 240) -> dict:
    """Watch `last` while `p` trains. On each new version: SIGSTOP the process (or its whole group) so it
    cannot move on, load the checkpoint, and return it (still stopped) if want(ckpt) holds; else SIGCONT."""
    from mt_cli.checkpoint import load_checkpoint

    def stamp():
        try:
            st = last.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    seen = stamp()  # a last.pt from before this process (a resumed run's start) does not count
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            out, err = p.communicate()
            raise AssertionError(f"the run ended (rc {p.returncode}) before the wanted checkpoint:\n{err[-3000:]}")
        now = stamp()
        if now is not None and now != seen:
            signal_run(p, signal.SIGSTOP)
            seen = stamp()
            ck = load_checkpoint(last)
            if want(ck):
                return ck
            signal_run(p, signal.SIGCONT)
        time.sleep(0.005)
    signal_run(p, signal.SIGKILL)
    raise AssertionError("timed out waiting for the checkpoint")


def mid_epoch(min_epoch: int = 1):
    def want(ck):
        prog = ck["train_state"]["progress"]
        return prog["position"] > 0 and prog["epoch"] >= min_epoch

    return want


def metrics(result_dir: Path) -> list[dict]:
    path = result_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def without_timing(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def assert_same_state(a: dict, b: dict, what: str = "") -> None:
    """Bit-identical tensors (and equal plain values) in two nested structures."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, what
        assert torch.equal(a, b), f"{what}: tensors differ (max abs diff {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{what}: keys differ"
        for k in a:
            assert_same_state(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{what}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


def assert_same_run(ref: Path, other: Path) -> None:
    """Two run folders (each holding saved/rel and result/rel) ended in exactly the same state."""
    from mt_cli.checkpoint import load_checkpoint

    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(ref / "saved" / RUN / name), load_checkpoint(other / "saved" / RUN / name)
        assert_same_state(a["model"], b["model"], f"{name} model")
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]), name
    ta = load_checkpoint(ref / "saved" / RUN / "last.pt")["train_state"]
    tb = load_checkpoint(other / "saved" / RUN / "last.pt")["train_state"]
    assert_same_state(ta["optimizer"], tb["optimizer"], "optimizer")
    assert_same_state(ta["ranks"], tb["ranks"], "rng+accumulators")
    assert {k: v for k, v in ta["progress"].items() if k != "elapsed"} == {
        k: v for k, v in tb["progress"].items() if k != "elapsed"
    }
    assert without_timing(metrics(ref / "result" / RUN)) == without_timing(metrics(other / "result" / RUN))
    sa = json.loads((ref / "result" / RUN / "summary.json").read_text())
    sb = json.loads((other / "result" / RUN / "summary.json").read_text())
    for key in ("best_epoch", "best_val_loss", "skipped_updates"):
        assert sa[key] == sb[key], key
    for split in ("valid", "test"):
        assert (sa["test"][split]["bleu"], sa["test"][split]["chrf"]) == (
            sb["test"][split]["bleu"],
            sb["test"][split]["chrf"],
        ), split
        hyp = f"{split}.beam{sa['test'][split]['beam_size']}.hyp"
        assert (ref / "result" / RUN / hyp).read_text() == (other / "result" / RUN / hyp).read_text(), hyp


def stray_temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp"))
