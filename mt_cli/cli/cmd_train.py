"""Commands that build models: mt prepare, train, average, plot and runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mt_cli.cli.shared import (
    ConfigOpt,
    DeviceOpt,
    SetOpt,
    _fail,
    _load,
    _refuse_overwrite,
    _say,
    app,
)


@app.command()
def prepare(
    config: str = ConfigOpt,
    source: Optional[str] = typer.Option(
        None, "--source", help="Folder with the Multi30k .gz files (offline); default: $MT_MULTI30K_DIR or download."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the prepared corpus is up to date."),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        help="Worker processes [the cores available; none for a small corpus]. The output does not depend on it.",
    ),
    set_: Optional[List[str]] = SetOpt,
):
    """Fetch, tokenize and numericalize the corpus into data/<name>/ (streamed: memory does not grow with it)."""
    from mt_cli.data.prepare import prepare_corpus

    cfg = _load(config, set_)
    prepare_corpus(cfg.data, source=source, force=force, log=_say, workers=workers)


@app.command()
def train(
    config: str = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    device: str = DeviceOpt,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the newest run of this config from its "
        "<saved>/<name>[-N]/last.pt: weights, optimizer, LR schedule, RNG states and the "
        "position in the epoch are restored, so the result equals an uninterrupted run.",
    ),
    resume_from: Optional[str] = typer.Option(
        None, "--resume-from", metavar="PATH", show_default=False, help="Continue from this last.pt (implies --resume)."
    ),
    init_from: Optional[str] = typer.Option(
        None,
        "--init-from",
        metavar="CKPT",
        show_default=False,
        help="Start a new run from this checkpoint's weights (fine-tuning: "
        "fresh optimizer and schedule, this config's data; same model "
        "and vocabularies). Sets train.init_from.",
    ),
    saved: str = typer.Option("saved", "--saved", help="Checkpoint root folder."),
    result: str = typer.Option("result", "--result", help="Logs and reports root folder."),
):
    """Train a Transformer; keeps best/last checkpoints, logs metrics per epoch, tests at the end.

    Ctrl-C or SIGTERM saves last.pt at the next step and prints the command that continues the run.
    Several GPUs or nodes: torchrun --nproc_per_node=N -m mt_cli train ... (see the README, Reliability)."""
    cfg = _load(config, set_)  # before the torch import: a config error should answer at once
    if init_from:
        if resume or resume_from:
            _fail("--init-from starts a new run; --resume continues one: give one of them", 2)
        cfg.train.init_from = init_from
    from mt_cli.evaluate import format_table
    from mt_cli.training import train as run

    res = resume_from or resume or None
    summary = run(cfg, device=device, resume=res, saved_root=saved, result_root=result, log=_say)
    if summary.get("rank", 0):  # torchrun: rank 0 reports
        return
    test = {k: v for k, v in summary.get("test", {}).items() if isinstance(v, dict) and "bleu" in v}
    if test:
        typer.echo(format_table(test))
    typer.echo(f"run {summary['run']}: checkpoints in {summary['saved']}, logs in {summary['result']}")


@app.command()
def average(
    checkpoints: List[str] = typer.Argument(..., help="Checkpoints of one run (e.g. saved/run/epoch_*.pt)."),
    output: str = typer.Option(..., "--output", "-o", help="Where to write the averaged checkpoint."),
):
    """Average the weights of several checkpoints of one run into a new checkpoint."""
    from mt_cli.averaging import average_checkpoints

    path = average_checkpoints([Path(p) for p in checkpoints], Path(output))
    typer.echo(f"averaged {len(checkpoints)} checkpoints -> {path}")


@app.command()
def plot(
    runs: List[str] = typer.Argument(..., help="Run folders, or run names under --result."),
    out: Optional[str] = typer.Option(
        None, "--out", "-o", help="PNG file [<run>/curves.png for one run, curves.png for several]."
    ),
    result: str = typer.Option("result", "--result", help="Where run names are looked up."),
):
    """Draw learning curves (loss, validation BLEU, learning rate) of one run, or several overlaid."""
    from mt_cli.plots import plot_runs, resolve_run

    if out:  # the run files plot reads: metrics.jsonl of each run (a missing run is plot_runs' to report)
        found = [resolve_run(r, result) for r in runs if Path(r).is_dir() or (Path(result) / r).is_dir()]
        _refuse_overwrite({"--out": out}, {"the run file": [f / "metrics.jsonl" for f in found]})
    typer.echo(f"wrote {plot_runs(runs, out, result)}")


@app.command()
def runs(
    names: Optional[List[str]] = typer.Argument(None, help="Runs to list [every run under --result]."),
    result: str = typer.Option("result", "--result", help="Folder holding the runs."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """List runs with the config keys that differ between them, best validation BLEU and test BLEU."""
    import json

    from mt_cli.runs import find_runs, format_runs, runs_report

    report = runs_report(find_runs(result, names))
    if not report["runs"]:
        _fail(f"no runs under {result}/", 1)
    if json_out:
        for r in report["runs"]:
            r["config"] = {k: r["config"].get(k) for k in report["differences"]}
        typer.echo(json.dumps(report, indent=1))
    else:
        typer.echo(format_runs(report))
