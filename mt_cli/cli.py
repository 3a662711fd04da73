"""The `mt` command line: a thin layer that parses, loads the config, and calls one function per command."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and use Transformer translation models (Multi30k de→en by default).")

DEFAULT_CONFIG = "configs/multi30k_de_en.yaml"
ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML experiment config.")
SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set train.lr=3e-4 (repeatable).")


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _load(config: str, overrides: Optional[List[str]]):
    from mt_cli.config import load_config

    return load_config(config, overrides or [])


def _device(name: str):
    from mt_cli.train import resolve_device

    return resolve_device(name)


def _amp(dev):
    from mt_cli.steps import resolve_precision

    return resolve_precision("auto", dev)


@app.command()
def prepare(config: str = ConfigOpt, source: Optional[str] = typer.Option(
        None, "--source", help="Folder with the Multi30k .gz files (offline); default: $MT_MULTI30K_DIR or download."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if the prepared corpus is up to date."),
        set_: Optional[List[str]] = SetOpt):
    """Fetch, tokenize and numericalize the corpus into data/<name>/."""
    from mt_cli.data.prepare import prepare_corpus

    cfg = _load(config, set_)
    prepare_corpus(cfg.data, source=source, force=force, log=_say)


@app.command()
def train(config: str = ConfigOpt, set_: Optional[List[str]] = SetOpt,
          device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
          resume: Optional[str] = typer.Option(None, "--resume", help="Continue a run: 'last' or a checkpoint path.",
                                               show_default=False),
          saved: str = typer.Option("saved", "--saved", help="Checkpoint root folder."),
          result: str = typer.Option("result", "--result", help="Logs and reports root folder.")):
    """Train a Transformer; keeps best/last checkpoints, logs metrics per epoch, tests at the end."""
    from mt_cli.evaluate import format_table
    from mt_cli.train import train as run

    cfg = _load(config, set_)
    res = True if resume == "last" else resume
    summary = run(cfg, device=device, resume=res, saved_root=saved, result_root=result, log=_say)
    test = {k: v for k, v in summary.get("test", {}).items() if isinstance(v, dict)}
    if test:
        typer.echo(format_table(test))
    typer.echo(f"run {summary['run']}: checkpoints in {summary['saved']}, logs in {summary['result']}")


@app.command()
def evaluate(checkpoint: str = typer.Option(..., "--checkpoint", help="A .pt checkpoint from mt train."),
             split: Optional[List[str]] = typer.Option(None, "--split", help="Split(s) to score [test_2016_flickr]."),
             beam: Optional[int] = typer.Option(None, "--beam", help="Beam size (1 = greedy) [greedy]."),
             device: str = typer.Option("auto", "--device"),
             out: Optional[str] = typer.Option(None, "--out", help="Report folder [result/<run>/eval]."),
             data_root: Optional[str] = typer.Option(None, "--data-root", help="Where prepared corpora live.")):
    """Decode splits of the prepared corpus and report sacreBLEU (with signature) and chrF."""
    from mt_cli.checkpoint import load_for_inference
    from mt_cli.evaluate import evaluate_splits, format_table

    dev = _device(device)
    model, cfg, codecs = load_for_inference(checkpoint, dev)
    if data_root:
        cfg.data.root = data_root
    out_dir = Path(out) if out else Path("result") / Path(checkpoint).resolve().parent.name / "eval"
    report = evaluate_splits(model, codecs, cfg, split or ["test_2016_flickr"], dev, beam or 1, out_dir,
                             _amp(dev), log=_say)
    typer.echo(format_table(report))
    typer.echo(f"report: {out_dir}")


@app.command()
def translate(checkpoint: str = typer.Option(..., "--checkpoint", help="A .pt checkpoint from mt train."),
              input: str = typer.Option("-", "--input", "-i", help="Text file, one sentence per line; - = stdin."),
              output: str = typer.Option("-", "--output", "-o", help="Output file; - = stdout."),
              beam: Optional[int] = typer.Option(None, "--beam", help="Beam size [config's decode.beam_size]."),
              nbest: int = typer.Option(1, "--nbest", help="Print the n best translations per line (tab-separated)."),
              device: str = typer.Option("auto", "--device")):
    """Translate a file or stdin, keeping line count and order."""
    from mt_cli.atomic import atomic_path, check_writable
    from mt_cli.checkpoint import load_for_inference
    from mt_cli.data.sources import read_lines
    from mt_cli.translate import translate_lines

    if output != "-":
        check_writable(Path(output).resolve().parent)
    dev = _device(device)
    model, cfg, codecs = load_for_inference(checkpoint, dev)
    if nbest > (beam or cfg.decode.beam_size):
        _fail(f"--nbest {nbest} needs a beam of at least {nbest} (--beam)", 2)
    lines = read_lines(Path(input)) if input != "-" else sys.stdin.read().splitlines()
    hyps = translate_lines(model, cfg, codecs, lines, dev, beam, nbest, _amp(dev), show_progress=input != "-",
                           warn=_say)
    text = "".join("\t".join(h) + "\n" for h in hyps)
    if output == "-":
        sys.stdout.write(text)
    else:
        with atomic_path(output) as tmp:
            tmp.write_text(text, encoding="utf-8")
        _say(f"wrote {len(hyps)} lines to {output}")


def main() -> None:
    """Entry point: known failures become one line on stderr and a non-zero exit, never a traceback."""
    from mt_cli.atomic import OutputError
    from mt_cli.checkpoint import CheckpointError
    from mt_cli.config import ConfigError
    from mt_cli.data.sources import DataError

    warnings.filterwarnings("ignore", message=".*capturable.*")
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except (ConfigError, DataError, CheckpointError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OutputError as e:
        typer.echo(f"error: {e.strerror or e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence for a one-line error
        from mt_cli.train import TrainingStopped

        if isinstance(e, TrainingStopped):
            typer.echo(f"stopped: {e}", err=True)
            sys.exit(1)
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        typer.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
