"""Learning curves: curves.png after every epoch of a real tiny run, `mt plot` for one or several runs,
TensorBoard scalars, and a plotting failure that warns once without stopping training."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_main
from matplotlib.image import imread

from mt_cli.config import config_from_dict
from mt_cli.plots import CURVES_DPI, CURVES_SIZE, EpochReport, plot_runs, read_metrics

REPO = Path(__file__).resolve().parents[1]
CURVES_PX = (round(CURVES_SIZE[1] * CURVES_DPI), round(CURVES_SIZE[0] * CURVES_DPI))  # (height, width)


def _has_tensorboard() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def write_slice(real_lines, folder: Path, n_train: int = 120, n_valid: int = 16) -> dict:
    """A small 'files' corpus from real Multi30k de-en lines: TSV train, prefix valid, TSV test."""
    folder.mkdir(parents=True, exist_ok=True)
    de, en = real_lines("train", "de"), real_lines("train", "en")
    (folder / "train.tsv").write_text(
        "".join(f"{a}\t{b}\n" for a, b in zip(de[:n_train], en[:n_train])), encoding="utf-8"
    )
    vde, ven = real_lines("val", "de"), real_lines("val", "en")
    (folder / "valid.de").write_text("\n".join(vde[:n_valid]) + "\n", encoding="utf-8")
    (folder / "valid.en").write_text("\n".join(ven[:n_valid]) + "\n", encoding="utf-8")
    (folder / "test.tsv").write_text(
        "".join(f"{a}\t{b}\n" for a, b in zip(vde[-n_valid:], ven[-n_valid:])), encoding="utf-8"
    )
    return {
        "corpus": "files",
        "train": str(folder / "train.tsv"),
        "valid": str(folder / "valid"),
        "test": [str(folder / "test.tsv")],
        "root": str(folder / "data"),
        "min_freq": 1,
    }


def tiny_config(data: dict, name: str = "tiny", **train):
    raw = {
        "name": name,
        "data": data,
        "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "d_ff": 64},
        "train": {"epochs": 2, "max_tokens": 512, "lr": 1e-3, "cuda_graphs": False, **train},
        "decode": {"beam_size": 1, "max_len_b": 5},
    }
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_lines):
    """A real two-epoch run of a tiny model on a slice (TensorBoard on when it is installed)."""
    from mt_cli.data.prepare import prepare_corpus
    from mt_cli.training import train

    base = tmp_path_factory.mktemp("plots")
    cfg = tiny_config(write_slice(real_lines, base / "corpus"), tensorboard=_has_tensorboard())
    prepare_corpus(cfg.data, log=lambda *_: None)
    log: list[str] = []
    summary = train(cfg, device="cpu", saved_root=str(base / "saved"), result_root=str(base / "result"), log=log.append)
    return Path(summary["result"]), log


def _png_shape(path: Path) -> tuple[int, int]:
    img = imread(path)
    return img.shape[0], img.shape[1]


def colour_pixels_per_panel(path: Path, colour: str) -> list[int]:
    """Pixels of one matplotlib colour in each quarter of the 2×2 figure (loss, BLEU, lr, perplexity): lines
    and markers are drawn in the run's colour, axes, text and grid never are."""
    from matplotlib.colors import to_rgb

    img = imread(path)[..., :3]
    close = abs(img - torch.tensor(to_rgb(colour)).numpy()).max(-1) < 0.08
    h, w = close.shape
    quarters = [
        (slice(r * h // 2, (r + 1) * h // 2), slice(c * w // 2, (c + 1) * w // 2)) for r in (0, 1) for c in (0, 1)
    ]
    return [int(close[rows, cols].sum()) for rows, cols in quarters]


def metrics_file(result: Path) -> list[dict]:
    """metrics.jsonl read here line by line, independently of read_metrics."""
    return [json.loads(line) for line in (result / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_curves_are_the_metrics(trained):
    """Each panel's lines hold exactly the epochs and values of metrics.jsonl."""
    from mt_cli.plots import curves_figure

    result, _ = trained
    recs = metrics_file(result)
    assert [r["epoch"] for r in recs] == [1, 2] and all(isinstance(r["val_bleu"], float) for r in recs)
    fig = curves_figure([("run", read_metrics(result))])
    loss, bleu, lr, ppl = fig.axes[:4]
    want = {(loss, 0): "train_loss", (loss, 1): "val_loss", (bleu, 0): "val_bleu", (lr, 0): "lr", (ppl, 0): "val_ppl"}
    for (ax, i), key in want.items():
        line = ax.get_lines()[i]
        assert list(line.get_xdata()) == [1, 2], key
        assert list(line.get_ydata()) == [r[key] for r in recs], key
    assert [len(ax.get_lines()) for ax in (loss, bleu, lr, ppl)] == [2, 1, 1, 1]


def test_training_draws_curves_every_epoch(trained):
    result, log = trained
    png = result / "curves.png"
    assert png.is_file()
    assert _png_shape(png) == CURVES_PX
    assert len(read_metrics(result)) == 2
    # every panel has its curve drawn (a blank figure of the right size has none of the run's colour)
    assert all(n > 50 for n in colour_pixels_per_panel(png, "C0")), colour_pixels_per_panel(png, "C0")
    assert not any(line.startswith("warning: could not") for line in log)
    assert not list(result.glob(".curves.png.*"))  # no temporary files left behind


def test_tensorboard_scalars(trained):
    if not _has_tensorboard():
        pytest.skip("tensorboard is not installed (pip install 'mt-cli[tensorboard]')")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    result, _ = trained
    mux = EventMultiplexer().AddRunsFromDirectory(str(result / "tensorboard"))
    mux.Reload()
    runs = mux.Runs()
    steps: dict[str, list[int]] = {}
    for run in runs:
        for tag in mux.GetAccumulator(run).Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in mux.Scalars(run, tag))
    for tag in ("loss/train", "loss/validation", "bleu/validation", "learning_rate"):
        assert sorted(steps[tag]) == [1, 2], tag


def test_tensorboard_missing_is_one_clear_error(monkeypatch, real_lines, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    cfg = tiny_config({"corpus": "files", "train": "x.tsv", "valid": "x.tsv"}, tensorboard=True)
    with pytest.raises(ValueError, match=r"train.tensorboard.*pip install"):
        EpochReport(cfg, log=lambda *_: None)
    from mt_cli.training import train

    with pytest.raises(ValueError, match=r"train.tensorboard.*pip install"):  # before any run folder is made
        train(
            cfg,
            device="cpu",
            saved_root=str(tmp_path / "saved"),
            result_root=str(tmp_path / "result"),
            log=lambda *_: None,
        )
    assert not (tmp_path / "saved").exists() and not (tmp_path / "result").exists()


def test_plot_failure_warns_once_and_goes_on(trained, monkeypatch, tmp_path):
    import mt_cli.plots as plots

    result, _ = trained
    run = tmp_path / "run"
    shutil.copytree(result, run)
    (run / "curves.png").unlink()

    def broken(*a, **k):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plots, "curves_figure", broken)
    log: list[str] = []
    report = EpochReport(tiny_config({"corpus": "files", "train": "x", "valid": "y"}), log=log.append)
    for rec in read_metrics(run):
        report(rec, run)  # must not raise
    warnings = [m for m in log if m.startswith("warning:")]
    assert len(warnings) == 1 and "no fonts today" in warnings[0] and "\n" not in warnings[0]
    assert not (run / "curves.png").exists()


def test_mt_plot_compares_runs(trained, tmp_path, monkeypatch, capsys):
    result, _ = trained
    root = tmp_path / "result"
    shutil.copytree(result, root / "a")
    shutil.copytree(result, root / "b")
    out = tmp_path / "cmp.png"
    code, stdout, err = run_main(
        monkeypatch, capsys, "plot", "a", str(root / "b"), "--result", str(root), "--out", str(out)
    )
    assert code == 0, err
    assert stdout == f"wrote {out}\n"
    assert _png_shape(out) == CURVES_PX
    for colour in ("C0", "C1"):  # both runs are drawn in every panel, one colour each
        assert all(n > 50 for n in colour_pixels_per_panel(out, colour)), (colour, colour_pixels_per_panel(out, colour))
    # one run, default file: <run>/curves.png, redrawn
    (root / "a" / "curves.png").unlink()
    assert plot_runs(["a"], result_root=root) == root / "a" / "curves.png"
    assert _png_shape(root / "a" / "curves.png") == CURVES_PX


def test_mt_plot_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "result" / "empty").mkdir(parents=True)
    for args in (["nope"], ["empty"], ["empty", "--out", "x.pdf"]):
        code, _, err = run_main(monkeypatch, capsys, "plot", *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "PNG" in run_main(monkeypatch, capsys, "plot", "empty", "--out", "x.pdf")[2]


def test_read_metrics_resumed_and_torn(tmp_path):
    recs = [
        {"epoch": 1, "val_loss": 3.0},
        {"epoch": 2, "val_loss": 2.5},
        {"epoch": 2, "val_loss": 2.4},
        {"epoch": 3, "val_loss": 2.0},
    ]
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in recs) + '\n{"epoch": 4, "val', encoding="utf-8"
    )
    assert [(r["epoch"], r["val_loss"]) for r in read_metrics(tmp_path)] == [(1, 3.0), (2, 2.4), (3, 2.0)]
