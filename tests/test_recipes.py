"""Training recipes on a small real corpus: early stopping, checkpoint averaging, schedules, bench,
and that training on a prepared corpus never imports spaCy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY

from mt_cli.config import load_config


def _train(small, *more, tmp):
    from mt_cli.training import train

    d, overrides = small
    cfg = load_config(TINY, overrides + list(more))
    return cfg, train(
        cfg, device="cpu", saved_root=str(tmp / "saved"), result_root=str(tmp / "result"), log=lambda *_: None
    )


def _metrics(summary):
    path = os.path.join(summary["result"], "metrics.jsonl")
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_early_stopping_on_validation_bleu(small, tmp_path):
    # with a vanishing learning rate the translations, hence BLEU, cannot improve after epoch 1
    _, s = _train(
        small,
        "train.epochs=10",
        "train.lr=1e-12",
        "train.best_metric=val_bleu",
        "train.early_stopping=2",
        "train.scheduler=constant",
        tmp=tmp_path,
    )
    epochs = [m["epoch"] for m in _metrics(s)]
    assert epochs == [1, 2, 3]
    assert s["best_epoch"] == 1 and s["best_val_bleu"] is not None


def test_average_last_n_epochs(small, tmp_path):
    from mt_cli.checkpoint import load_checkpoint

    _, s = _train(small, "train.epochs=3", "train.average_last=2", "train.val_bleu=false", tmp=tmp_path)
    saved = tmp_path / "saved" / s["run"]
    kept = sorted(p.name for p in saved.glob("epoch_*.pt"))
    assert kept == ["epoch_0002.pt", "epoch_0003.pt"]  # older snapshots pruned
    a, b = (load_checkpoint(saved / k)["model"] for k in kept)
    avg = load_checkpoint(saved / "averaged.pt")["model"]
    key = "encoder.0.ffn.0.weight"
    assert not torch.equal(a[key], b[key])
    torch.testing.assert_close(avg[key], (a[key] + b[key]) / 2)
    # the average is tested unless best.pt does better on the validation set (same beam)
    picks = s["test"]["valid_bleu_of"]
    assert set(picks) == {"averaged.pt", "best.pt"} and "test_small" in s["test"]
    winner = "averaged.pt" if picks["averaged.pt"] >= picks["best.pt"] else "best.pt"
    assert s["test"]["checkpoint"].endswith(winner)
    assert s["test"]["valid"]["bleu"] == pytest.approx(picks[winner], abs=1e-6)


def test_final_test_keeps_best_when_the_average_is_worse_on_valid(small, tmp_path):
    """Epoch snapshots replaced by untrained weights (as after a collapse): the average loses on valid."""
    from mt_cli.checkpoint import load_checkpoint, save_state
    from mt_cli.evaluate import final_test

    cfg, s = _train(
        small,
        "train.epochs=3",
        "train.average_last=2",
        "train.val_bleu=false",
        "train.lr=3e-3",
        "decode.beam_size=1",
        tmp=tmp_path,
    )
    saved = tmp_path / "saved" / s["run"]
    for p in saved.glob("epoch_*.pt"):
        ck = load_checkpoint(p)
        ck["model"] = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in ck["model"].items()}
        save_state(p, ck)
    logs = []
    rep = final_test(cfg, saved, tmp_path / "again", torch.device("cpu"), None, logs.append)
    assert rep["checkpoint"].endswith("best.pt"), logs
    assert rep["valid_bleu_of"]["best.pt"] > rep["valid_bleu_of"]["averaged.pt"]
    assert any("-> best.pt" in x for x in logs)


def test_inverse_sqrt_schedule_warms_up_then_decays(small, tmp_path):
    cfg, s = _train(
        small,
        "train.epochs=2",
        "train.scheduler=inverse_sqrt",
        "train.warmup_steps=5",
        "train.lr=1e-3",
        "train.val_bleu=false",
        tmp=tmp_path,
    )
    for m in _metrics(s):  # the logged lr is the one of the epoch's last step
        step, w = m["step"], 5
        assert m["lr"] == pytest.approx(1e-3 * min(step / w, (w / step) ** 0.5), rel=1e-6)


def test_cosine_schedule_reaches_min_lr_at_the_runs_last_update(small, tmp_path):
    """The trainer gives the schedule the run's length (epochs × updates per epoch): the last epoch's last
    update runs at min_lr, and the rate falls every epoch after warm-up."""
    cfg, s = _train(
        small,
        "train.epochs=3",
        "train.scheduler=cosine",
        "train.warmup_steps=3",
        "train.lr=1e-3",
        "train.min_lr=1e-5",
        "train.val_bleu=false",
        tmp=tmp_path,
    )
    metrics = _metrics(s)
    total, w = metrics[-1]["step"], 3
    assert total == 3 * metrics[0]["step"]  # every epoch the same number of updates
    for m in metrics:
        t = (m["step"] - w) / (total - w)
        assert m["lr"] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * t)) / 2, rel=1e-6)
    assert metrics[-1]["lr"] == pytest.approx(1e-5)


def test_training_does_not_import_spacy(small, tmp_path):
    d, overrides = small
    code = (
        "import sys; sys.modules['spacy'] = None\n"  # any `import spacy` now raises ImportError
        "from mt_cli.config import load_config; from mt_cli.training import train\n"
        f"cfg = load_config({str(TINY)!r}, {overrides + ['train.max_steps=3']!r})\n"
        f"s = train(cfg, device='cpu', saved_root={str(tmp_path / 's')!r}, result_root={str(tmp_path / 'r')!r},"
        " log=lambda *_: None)\n"
        "assert 'test_small' in s['test'], s\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bench_cli_writes_report(small, tmp_path):
    d, overrides = small
    out = tmp_path / "bench.json"
    args = [
        sys.executable,
        "-m",
        "mt_cli",
        "bench",
        "-c",
        str(TINY),
        "--steps",
        "3",
        "--device",
        "cpu",
        "--split",
        "test_small",
        "--out",
        str(out),
    ]
    for o in overrides:
        args += ["--set", o]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["training"]["steps"] == 3 and rep["training"]["tgt_tokens_per_s"] > 0
    assert rep["training"]["tokens_per_s"] > rep["training"]["tgt_tokens_per_s"]  # source + target
    assert set(rep["translation"]) == {"beam1", "beam5"}
    assert rep["translation"]["beam5"]["sentences"] == 30
    assert 0 < rep["translation"]["beam5"]["cold_longest_batch"]["sentences"] <= 30
    assert rep["device"].startswith("cpu") and rep["torch"] == torch.__version__
    # translation only, of a trained checkpoint, with its decoding settings overridden
    _, s = _train(small, "train.max_steps=2", "train.val_bleu=false", tmp=tmp_path)
    ckpt = os.path.join(s["saved"], "best.pt")
    r = subprocess.run(
        args + ["--no-training", "--checkpoint", ckpt, "--set", "decode.batch_size=7"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["training"] is None and rep["translation_model"] == ckpt
    assert rep["translation"]["beam5"]["cold_longest_batch"]["sentences"] == 7


def test_label_smoothed_loss_ignores_target_padding():
    from conftest import random_ids, small_model

    from mt_cli.data.vocab import PAD
    from mt_cli.steps import loss_sum

    model = small_model()
    g = torch.Generator().manual_seed(5)
    src, tgt_in, tgt_out = random_ids(2, 5, 50, g), random_ids(2, 4, 60, g), random_ids(2, 4, 60, g)
    tgt_out[1, 2:] = PAD
    eps = 0.1
    with torch.no_grad():
        got, n = loss_sum(model, src, tgt_in, tgt_out, eps)
        logp = torch.log_softmax(model(src, tgt_in).float(), -1)
    real = tgt_out != PAD
    nll = -logp.gather(-1, tgt_out[..., None]).squeeze(-1)
    smooth = -logp.mean(-1)  # uniform over the whole vocabulary, as torch defines it
    want = ((1 - eps) * nll + eps * smooth)[real].sum()
    assert int(n) == int(real.sum()) == 6
    torch.testing.assert_close(got, want)


def test_average_command_writes_the_mean_checkpoint(small, tmp_path):
    from mt_cli.checkpoint import load_checkpoint

    _, s = _train(small, "train.epochs=2", "train.keep_last=2", "train.val_bleu=false", tmp=tmp_path)
    saved = tmp_path / "saved" / s["run"]
    eps = sorted(saved.glob("epoch_*.pt"))
    out = tmp_path / "avg.pt"
    r = subprocess.run(
        [sys.executable, "-m", "mt_cli", "average", *map(str, eps), "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (load_checkpoint(p)["model"] for p in eps)
    key = "decoder.0.ffn.3.weight"
    torch.testing.assert_close(load_checkpoint(out)["model"][key], (a[key] + b[key]) / 2)
    # refused: overwriting an input; another vocabulary (same architecture)
    from mt_cli.averaging import average_checkpoints
    from mt_cli.checkpoint import save_state

    with pytest.raises(ValueError, match="is the same file as the checkpoint to average"):
        average_checkpoints(eps, eps[0])
    other = load_checkpoint(eps[0])
    other["codecs"]["tgt"]["itos"] = list(reversed(other["codecs"]["tgt"]["itos"]))
    save_state(tmp_path / "other.pt", other)
    with pytest.raises(ValueError, match="other.pt: a different model or vocabulary"):
        average_checkpoints([tmp_path / "other.pt", eps[1]], tmp_path / "avg2.pt")


def test_compiled_training_matches_eager(small, tmp_path):
    # torch.compile fuses kernels (the option for GPUs without CUDA graphs); same seed, same loss
    losses = []
    for compile_ in ("false", "true"):
        _, s = _train(
            small, "train.max_steps=3", f"train.compile={compile_}", "train.val_bleu=false", tmp=tmp_path / compile_
        )
        losses.append(_metrics(s)[0]["train_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
