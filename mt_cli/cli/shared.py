"""What every command shares: the Typer app, common options, and the one-line failure helpers."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train, evaluate and use Transformer translation models (Multi30k de→en by default).",
)


DEFAULT_CONFIG = "configs/multi30k_de_en.yaml"


ConfigOpt = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML experiment config.")


SetOpt = typer.Option(None, "--set", help="Override a config key, e.g. --set train.lr=3e-4 (repeatable).")


AttnLayerOpt = typer.Option("last", "--attention-layer", help="Decoder layer of the maps: N (1 = first), last or all.")


CheckpointsOpt = typer.Option(
    ...,
    "--checkpoint",
    help="A .pt checkpoint from mt train, or a folder from mt export (CTranslate2); several checkpoints "
    "(same vocabularies): their ensemble.",
)


AttnHeadsOpt = typer.Option("mean", "--attention-heads", help="Heads: mean (averaged), all (one panel each) or N.")


DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")


MapsDirOpt = typer.Option(
    None,
    "--attention",
    help="Also draw a cross-attention map per line (of the best translation) into this folder: NNNN.png.",
)


ChunkLinesOpt = typer.Option(
    10_000, "--chunk-lines", help="Lines read, translated and written at a time (memory grows with it)."
)


SampleOpt = typer.Option(
    None, "--sample", help="Sample instead of searching: topk:K or topp:P (e.g. back-translation)."
)


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _fail(msg: str, code: int) -> None:
    from mt_cli.errors import say_error

    say_error(msg)
    raise typer.Exit(code)


def _load(config: str, overrides: Optional[List[str]]):
    from mt_cli.config import load_config

    return load_config(config, overrides or [])


def _device(name: str):
    from mt_cli.distributed import resolve_device

    return resolve_device(name)


def _check_beam(beam: Optional[int], nbest: int = 1) -> None:
    from mt_cli.config.schema import MAX_BEAM

    if beam is not None and not 1 <= beam <= MAX_BEAM:
        _fail(f"--beam {beam}: must be in [1, {MAX_BEAM}]", 2)
    if nbest < 1:
        _fail(f"--nbest {nbest}: must be >= 1", 2)


def _amp(dev):
    from mt_cli.steps import resolve_precision

    return resolve_precision("auto", dev)


def _refuse_overwrite(outputs: dict, inputs: dict, names: dict | None = None) -> None:
    """No output may replace an input (by path, symlink or hard link). `outputs`: {option: file, or folder of
    .png maps (--attention)}; `names`: {option: the files written into that folder} where they are known."""
    from mt_cli.atomic import refuse_overwrite, refuse_overwrite_in

    for option, out in outputs.items():
        if option == "--attention":
            refuse_overwrite_in(out, "*.png", inputs, option)
        elif names and option in names:
            refuse_overwrite([Path(out) / n for n in names[option]], inputs, option)
        else:
            refuse_overwrite(out, inputs, option)


def _attention_setup(folder: str, layer: str, heads: str):
    """Check the attention-map options before any decoding; returns (layer, heads) parsed."""
    from mt_cli.atomic import check_writable
    from mt_cli.attention_maps import parse_heads, parse_layer

    parsed = parse_layer(layer), parse_heads(heads)
    check_writable(folder)
    return parsed


def _check_output_file(output: str) -> None:
    """A named output must be a file in a writable folder (checked before the model loads)."""
    from mt_cli.atomic import check_writable

    if output != "-":
        if Path(output).is_dir():
            _fail(f"--output {output}: is a folder; name a file in it", 2)
        check_writable(Path(output).resolve().parent)
