"""Learning curves from result/<run>/metrics.jsonl (PNG, headless), and per-epoch reporting during
training: curves.png refreshed after every epoch, optional TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

from mt_cli.atomic import atomic_path
from mt_cli.safe_parse import MAX_JSONL_BYTES, parse_json, read_bytes

CURVES = "curves.png"
CURVES_SIZE = (12.0, 8.0)  # inches; at CURVES_DPI the PNG is 1200 × 800 pixels
CURVES_DPI = 100


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run, in order; a record for an epoch that was repeated (a resumed
    run) replaces the earlier one; unreadable lines (a torn write, bad UTF-8, nested too deep) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no metrics.jsonl (not a training run, or no epoch finished yet)")
    by_epoch: dict[int, dict] = {}
    for line in read_bytes(path, MAX_JSONL_BYTES, "metrics log").decode("utf-8", errors="replace").splitlines():
        try:
            rec = parse_json(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def resolve_run(run: str | Path, result_root: str | Path = "result") -> Path:
    """A run folder given as a path, or as a name under `result_root`."""
    p = Path(run)
    for cand in (p, Path(result_root) / p):
        if cand.is_dir():
            return cand
    raise ValueError(f"{run}: no such run (neither a folder nor a run name under {result_root}/)")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [e for e, _ in pts], [v for _, v in pts]


def curves_figure(runs: list[tuple[str, list[dict]]], size=CURVES_SIZE, dpi: int = CURVES_DPI):
    """A 2×2 figure — loss (train solid, validation dashed), validation BLEU, learning rate,
    validation perplexity — with one colour per run, overlaid for comparison."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax_loss, ax_bleu, ax_lr, ax_ppl = fig.subplots(2, 2).flatten()
    many = len(runs) > 1
    for i, (label, recs) in enumerate(runs):
        color = f"C{i % 10}"
        prefix = f"{label} " if many else ""
        ax_loss.plot(*_series(recs, "train_loss"), "-o", color=color, ms=3, label=f"{prefix}train")
        ax_loss.plot(*_series(recs, "val_loss"), "--s", color=color, ms=3, label=f"{prefix}validation")
        ax_bleu.plot(*_series(recs, "val_bleu"), "-o", color=color, ms=3, label=label)
        ax_lr.plot(*_series(recs, "lr"), "-o", color=color, ms=3, label=label)
        ax_ppl.plot(*_series(recs, "val_ppl"), "-o", color=color, ms=3, label=label)
    titles = [
        (ax_loss, "loss (label-smoothed train, plain validation)", "cross-entropy / token"),
        (ax_bleu, "validation BLEU", "BLEU"),
        (ax_lr, "learning rate (at the end of the epoch)", "lr"),
        (ax_ppl, "validation perplexity", "perplexity"),
    ]
    for ax, title, ylabel in titles:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_lines() and (ax is ax_loss or many):
            ax.legend(fontsize=8)
    if any(_series(r, "val_ppl")[1] for _, r in runs):
        ax_ppl.set_yscale("log")
    if any(_series(r, "lr")[1] for _, r in runs):
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if not any(_series(r, "val_bleu")[1] for _, r in runs):
        ax_bleu.text(
            0.5,
            0.5,
            "no validation BLEU\n(train.val_bleu: false)",
            ha="center",
            va="center",
            transform=ax_bleu.transAxes,
            color="gray",
        )
    fig.suptitle(" vs ".join(label for label, _ in runs) if many else runs[0][0])
    fig.tight_layout()
    return fig


def save_figure(fig, out: str | Path) -> Path:
    """Write a figure as PNG atomically (a reader never sees half a file)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return out


def plot_runs(runs: list[str | Path], out: str | Path | None = None, result_root: str | Path = "result") -> Path:
    """Learning curves of one run, or several overlaid; default file: <run>/curves.png for one run,
    curves.png in the current folder for several."""
    if not runs:
        raise ValueError("name at least one run")
    if out is not None and Path(out).suffix.lower() != ".png":
        raise ValueError(f"--out {out}: only PNG is written; use a .png file name")
    folders = [resolve_run(r, result_root) for r in runs]
    data = []
    for f in folders:
        recs = read_metrics(f)
        if not recs:
            raise ValueError(f"{f}: metrics.jsonl holds no finished epoch yet")
        data.append((f.resolve().name, recs))
    names = [n for n, _ in data]
    if len(set(names)) < len(names):  # same name in different result roots: use the paths
        data = [(str(f), recs) for f, (_, recs) in zip(folders, data)]
    if out is None:
        out = folders[0] / CURVES if len(folders) == 1 else Path(CURVES)
    return save_figure(curves_figure(data), out)


class EpochReport:
    """Called by the training loop after each epoch's metrics line is written (rank 0): redraws
    <run>/curves.png and, with train.tensorboard, adds the epoch's scalars under <run>/tensorboard/.
    A missing tensorboard package is an error at construction (before training starts); a failure
    while drawing or logging only warns, once, and training goes on."""

    TAGS = {
        "train_loss": "loss/train",
        "val_loss": "loss/validation",
        "val_ppl": "perplexity/validation",
        "val_bleu": "bleu/validation",
        "lr": "learning_rate",
        "tgt_tokens_per_s": "speed/tgt_tokens_per_s",
        "seconds": "time/train_seconds",
    }

    def __init__(self, cfg, log=print, enabled: bool = True):
        self.log = log
        self.enabled = enabled
        self.tensorboard = bool(cfg.train.tensorboard)
        self.warned: set[str] = set()
        if self.tensorboard:
            tensorboard_writer_class()  # fail now, not after the first epoch

    def _warn(self, what: str, e: Exception) -> None:
        if what not in self.warned:
            self.warned.add(what)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            self.log(
                f"warning: could not {what} ({type(e).__name__}: {first}); training goes on, this warning is shown once"
            )

    def __call__(self, rec: dict, result_dir: str | Path) -> None:
        """After `rec` was appended to result_dir/metrics.jsonl."""
        if not self.enabled:
            return
        result_dir = Path(result_dir)
        try:
            path = result_dir / CURVES
            save_figure(curves_figure([(result_dir.name, read_metrics(result_dir))]), path)
        except Exception as e:  # noqa: BLE001 - a picture must never stop training
            self._warn(f"draw {result_dir / CURVES}", e)
        if self.tensorboard:
            try:
                log_scalars(result_dir / "tensorboard", rec)
            except Exception as e:  # noqa: BLE001
                self._warn(f"write TensorBoard logs to {result_dir / 'tensorboard'}", e)


def tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "train.tensorboard: true needs the tensorboard package: pip install 'mt-cli[tensorboard]' "
            "(or pip install tensorboard), or set train.tensorboard: false"
        ) from None
    return SummaryWriter


def log_scalars(folder: Path, rec: dict) -> None:
    """One epoch's scalars (x axis: epoch). The writer is opened and closed per epoch, so nothing is
    left open if training stops; TensorBoard reads the several event files of the folder as one run."""
    writer_cls = tensorboard_writer_class()
    with writer_cls(log_dir=str(folder)) as w:
        for key, tag in EpochReport.TAGS.items():
            v = rec.get(key)
            if isinstance(v, (int, float)):
                w.add_scalar(tag, float(v), rec["epoch"])
