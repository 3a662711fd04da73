"""The `mt` command line: a thin layer that parses, loads the config, and calls one function per command.

Each command imports what it needs inside its function: `mt --help` and a config error answer at once,
without importing torch (seconds). A command's signature declares its options (Typer), so `translate`,
`evaluate` and `bench` run past 60 lines; their bodies are checks and one call each."""

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
def evaluate(
    checkpoint: List[str] = CheckpointsOpt,
    split: Optional[List[str]] = typer.Option(None, "--split", help="Split(s) to score [test_2016_flickr]."),
    beam: Optional[int] = typer.Option(None, "--beam", help="Beam size (1 = greedy) [greedy]."),
    length_penalty: Optional[float] = typer.Option(
        None, "--length-penalty", help="GNMT alpha of beam search [the config's decode.length_penalty]."
    ),
    device: str = DeviceOpt,
    out: Optional[str] = typer.Option(None, "--out", help="Report folder [result/<run>/eval]."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Where prepared corpora live."),
    attention: Optional[str] = typer.Option(
        None,
        "--attention",
        help="Also draw cross-attention maps of the first --limit sentences of each split into this folder.",
    ),
    limit: int = typer.Option(10, "--limit", help="Sentences per split with an attention map."),
    attention_layer: str = AttnLayerOpt,
    attention_heads: str = AttnHeadsOpt,
):
    """Decode splits of the prepared corpus and report sacreBLEU (with signature) and chrF."""
    from mt_cli.atomic import check_writable, no_new_folders_on_failure
    from mt_cli.ct2_engine import load_translator
    from mt_cli.evaluate import evaluate_splits, format_table, report_files

    _check_beam(beam)
    splits, tag = split or ["test_2016_flickr"], "." + "+".join(Path(c).stem for c in checkpoint)
    tag += "" if length_penalty is None else f".lp{length_penalty:g}"  # its own report: never merged with others
    out_dir = Path(out) if out else Path("result") / Path(checkpoint[0]).resolve().parent.name / "eval"
    # file names carry the checkpoint's name: evaluating best.pt and last.pt keeps both reports
    _refuse_overwrite({"--out": out_dir}, {"--checkpoint": checkpoint}, {"--out": report_files(splits, tag, beam or 1)})
    maps = _eval_maps_setup(attention, attention_layer, attention_heads, limit, splits, checkpoint)
    dev = _device(device)
    model, cfg, codecs = load_translator(checkpoint, dev)
    if attention:
        from mt_cli.attention_maps import check_selection

        check_selection(model, *maps)
    if data_root:
        cfg.data.root = data_root
    if length_penalty is not None:
        cfg = _with_length_penalty(cfg, length_penalty)
    check_writable(out_dir)  # before decoding, not after
    with no_new_folders_on_failure(out_dir, attention):  # a failure leaves no empty eval/ or map folders
        report = evaluate_splits(
            model,
            codecs,
            cfg,
            splits,
            dev,
            beam or 1,
            out_dir,
            _amp(dev),
            log=_say,
            tag=tag,
            checkpoint=checkpoint,
        )
        typer.echo(format_table(report))
        typer.echo(f"report: {out_dir}")
        if attention:
            _draw_eval_maps(model, codecs, cfg, list(report), dev, beam or 1, limit, Path(attention), maps)


def _with_length_penalty(cfg, alpha: float):
    """`cfg` with decode.length_penalty = alpha, validated like the config key (one line naming the option)."""
    from mt_cli.config import ConfigError, config_from_dict

    try:
        return config_from_dict(cfg.to_dict(), [f"decode.length_penalty={alpha!r}"])
    except ConfigError as e:
        _fail(f"--length-penalty {alpha}: {str(e).split(': ', 1)[-1]}", 2)


def _eval_maps_setup(attention, layer: str, heads: str, limit: int, splits: list[str], checkpoint: list[str]):
    """mt evaluate's --attention options checked before any work: (layer, heads), or None without maps."""
    from mt_cli.atomic import refuse_overwrite_in
    from mt_cli.ct2_engine import is_exported

    if not attention:
        return None
    maps = _attention_setup(attention, layer, heads)
    if limit < 1:
        _fail(f"--limit {limit}: must be >= 1", 2)
    for name in splits:
        refuse_overwrite_in(Path(attention) / name, "*.png", {"--checkpoint": checkpoint}, "--attention")
    if len(checkpoint) > 1 or is_exported(checkpoint[0]):
        _fail("--attention draws the attention of one PyTorch model; give a single .pt --checkpoint", 2)
    return maps


def _draw_eval_maps(model, codecs, cfg, splits: list[str], dev, beam: int, limit: int, folder: Path, maps) -> None:
    from mt_cli.attention_maps import split_items, write_attention_maps

    for name in splits:
        items = split_items(model, codecs, cfg, name, dev, beam, limit, _amp(dev))
        paths = write_attention_maps(model, codecs, items, folder / name, dev, *maps)
        _say(f"wrote {len(paths)} attention maps to {folder / name}")


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


@app.command()
def translate(
    checkpoint: List[str] = CheckpointsOpt,
    input: str = typer.Option("-", "--input", "-i", help="Text file, one sentence per line; - = stdin."),
    output: str = typer.Option("-", "--output", "-o", help="Output file; - = stdout."),
    beam: Optional[int] = typer.Option(None, "--beam", help="Beam size [config's decode.beam_size]."),
    nbest: int = typer.Option(1, "--nbest", help="Print the n best translations per line (tab-separated)."),
    device: str = DeviceOpt,
    attention: Optional[str] = MapsDirOpt,
    attention_layer: str = AttnLayerOpt,
    attention_heads: str = AttnHeadsOpt,
    chunk_lines: int = ChunkLinesOpt,
    max_line_bytes: int = typer.Option(1 << 20, "--max-line-bytes", help="Longest input line accepted."),
    sample: Optional[str] = SampleOpt,
    seed: int = typer.Option(0, "--seed", help="Random seed of --sample."),
    src_lang: Optional[str] = typer.Option(None, "--src-lang", help="Source language [the model's main one]."),
    tgt_lang: Optional[str] = typer.Option(None, "--tgt-lang", help="Target language [the model's main one]."),
):
    """Translate a file or stdin, keeping line count and order; output is written chunk by chunk."""
    from mt_cli.ct2_engine import load_translator
    from mt_cli.data.multilingual import choose_direction, for_direction
    from mt_cli.translate import open_input, output_writer, read_chunks, sigterm_raises, translate_stream

    _refuse_overwrite({"--output": output, "--attention": attention}, {"--input": input, "--checkpoint": checkpoint})
    sampler = _translate_search(beam, nbest, sample, seed, chunk_lines, max_line_bytes)
    maps = _translate_maps_setup(attention, attention_layer, attention_heads, checkpoint)
    _check_output_file(output)
    dev = _device(device)
    stream, where = open_input(input)  # a missing input file answers before the model loads
    model, cfg, codecs = load_translator(checkpoint, dev)
    codecs = for_direction(codecs, cfg.data, choose_direction(cfg.data, src_lang, tgt_lang))
    if attention:
        from mt_cli.attention_maps import check_selection

        check_selection(model, *maps)
    if not sampler and nbest > (beam or cfg.decode.beam_size):
        _fail(f"--nbest {nbest} needs a beam of at least {nbest} (--beam)", 2)
    n_maps: list = []
    draw = _chunk_maps_writer(model, codecs, attention, dev, maps, n_maps) if attention else None
    with sigterm_raises(), stream, output_writer(output) as write:
        n = translate_stream(
            model,
            cfg,
            codecs,
            read_chunks(stream, where, chunk_lines, max_line_bytes),
            write,
            dev,
            beam,
            nbest,
            _amp(dev),
            show_progress=input != "-",
            warn=_say,
            on_chunk=draw,
            sampler=sampler,
        )
    if output != "-":
        _say(f"wrote {n} lines to {output}")
    if attention:
        _say(f"wrote {len(n_maps)} attention maps to {attention}")


def _translate_search(beam, nbest: int, sample, seed: int, chunk_lines: int, max_line_bytes: int):
    """mt translate's search and reading options checked together; the Sampler of --sample, or None."""
    from mt_cli.decode import Sampler

    _check_beam(beam, nbest)
    if chunk_lines < 1 or max_line_bytes < 1:
        _fail(f"--chunk-lines {chunk_lines} / --max-line-bytes {max_line_bytes}: must be >= 1", 2)
    sampler = Sampler.parse(sample, seed) if sample else None
    if sampler and (nbest > 1 or (beam or 1) > 1):
        _fail(f"--sample {sample} draws one translation per line: it takes no --beam or --nbest", 2)
    return sampler


def _chunk_maps_writer(model, codecs, folder: str, dev, maps, written: list):
    """A callback drawing one chunk's attention maps as the chunk is done; their names go to `written`."""
    from mt_cli.attention_maps import write_attention_maps

    def draw(items):
        named = [(f"{i:0{max(4, len(str(i)))}d}", s, h) for i, s, h in items]
        written.extend(write_attention_maps(model, codecs, named, folder, dev, *maps))

    return draw


def _translate_maps_setup(attention, layer: str, heads: str, checkpoint: list[str]):
    if not attention:
        return None
    if len(checkpoint) > 1:
        _fail("--attention draws one model's attention; give a single --checkpoint", 2)
    return _attention_setup(attention, layer, heads)


def _check_output_file(output: str) -> None:
    """A named output must be a file in a writable folder (checked before the model loads)."""
    from mt_cli.atomic import check_writable

    if output != "-":
        if Path(output).is_dir():
            _fail(f"--output {output}: is a folder; name a file in it", 2)
        check_writable(Path(output).resolve().parent)


@app.command()
def bench(
    config: str = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    steps: int = typer.Option(
        100, "--steps", help="Timed training steps (after warm-up: a step per shape on a GPU, two on the CPU)."
    ),
    checkpoint: Optional[str] = typer.Option(
        None,
        "--checkpoint",
        help="Model for translation speed: a .pt checkpoint or a folder from mt export [an untrained one].",
    ),
    split: str = typer.Option("test_2016_flickr", "--split", help="Split to translate."),
    training: bool = typer.Option(True, "--training/--no-training", help="Also time training steps."),
    device: str = DeviceOpt,
    out: Optional[str] = typer.Option(None, "--out", help="JSON report [result/bench/<config name>.json]."),
):
    """Measure training throughput, translation speed (greedy, beam 5) and peak memory."""
    import json

    cfg = _load(config, set_)
    if steps < 1:
        _fail(f"--steps {steps}: must be >= 1", 2)
    import torch

    from mt_cli.atomic import check_writable, write_json
    from mt_cli.bench import bench_training, bench_translation, environment
    from mt_cli.ct2_engine import is_exported, load_translator
    from mt_cli.evaluate import load_eval_split

    dev = _device(device)
    path = Path(out) if out else Path("result") / "bench" / f"{cfg.name}.json"
    _refuse_overwrite({"--out": path}, {"--config": config, "--checkpoint": checkpoint})
    check_writable(path.parent)
    if checkpoint:
        # a bad checkpoint fails before the timing; on the CPU until then, out of the training memory peak
        model, tcfg, codecs = load_translator(checkpoint, torch.device("cpu"))
        decode_sets = [s for s in set_ or [] if s.strip().startswith("decode.")]
        if decode_sets:  # --set decode.* applies to the checkpoint's config too
            from mt_cli.config import config_from_dict

            tcfg = config_from_dict(tcfg.to_dict(), decode_sets)
    else:
        tcfg, codecs = cfg, None
    load_eval_split(tcfg, split)  # so does an unknown split
    report = {"config": config, "overrides": set_ or [], **environment(dev)}
    report["training"] = bench_training(cfg, dev, steps, log=_say) if training else None
    if training:
        _say(
            f"training: {report['training']['tokens_per_s']:,} src+tgt tok/s, "
            f"{report['training']['tgt_tokens_per_s']:,} tgt tok/s"
        )
    exported = bool(checkpoint) and is_exported(checkpoint)
    model, codecs = _bench_translator(cfg, checkpoint, exported, model if checkpoint else None, codecs, dev)
    report["translation_model"] = checkpoint or "untrained"
    report["translation_engine"] = "ctranslate2" if exported else "pytorch"
    report["translation"] = bench_translation(model, tcfg, codecs, dev, split, [1, 5])
    if dev.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
    write_json(path, report)
    typer.echo(json.dumps({k: report[k] for k in ("device", "training", "translation")}, indent=1))
    typer.echo(f"saved {path}")


def _bench_translator(cfg, checkpoint, exported: bool, loaded, codecs, dev):
    """(model, codecs) mt bench translates with, on `dev`: the checkpoint loaded on the CPU before the training
    timing (an exported folder loaded again on `dev`), or an untrained model of the config."""
    from mt_cli.ct2_engine import load_translator
    from mt_cli.data.prepare import load_corpus
    from mt_cli.data.vocab import PAD
    from mt_cli.model import build_model

    if exported:
        return (load_translator(checkpoint, dev)[0] if dev.type != "cpu" else loaded), codecs  # CTranslate2
    if checkpoint:
        return loaded.to(dev), codecs
    codecs = load_corpus(cfg, cfg.train.bucket_width)[0]
    return build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD).to(dev).eval(), codecs


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


@app.command()
def score(
    checkpoint: str = typer.Option(..., "--checkpoint", help="A .pt checkpoint from mt train."),
    input: str = typer.Option(..., "--input", "-i", help="Source sentences, one per line; - = stdin."),
    reference: str = typer.Option(..., "--reference", "-r", help="Their translations, one per line."),
    output: str = typer.Option("-", "--output", "-o", help="Output file; - = stdout."),
    length_penalty: Optional[float] = typer.Option(
        None, "--length-penalty", help="GNMT alpha of the normalised score [config's]."
    ),
    device: str = DeviceOpt,
    chunk_lines: int = typer.Option(10_000, "--chunk-lines", help="Pairs read, scored and written at a time."),
    max_line_bytes: int = typer.Option(1 << 20, "--max-line-bytes", help="Longest line accepted."),
):
    """Print each pair's log-probability under the model (forced decoding): normalised<TAB>raw per line.

    normalised = raw / ((5 + len) / 6) ** alpha, the score beam search ranks by (len counts <eos>)."""
    from mt_cli.checkpoint import load_for_inference
    from mt_cli.data.multilingual import for_direction
    from mt_cli.score import paired_lines, score_stream
    from mt_cli.translate import chunked, open_input, output_writer, read_bounded_lines, sigterm_raises

    _refuse_overwrite({"--output": output}, {"--input": input, "--reference": reference, "--checkpoint": checkpoint})
    if chunk_lines < 1 or max_line_bytes < 1:
        _fail(f"--chunk-lines {chunk_lines} / --max-line-bytes {max_line_bytes}: must be >= 1", 2)
    if input == "-" and reference == "-":
        _fail("--input and --reference cannot both be stdin", 2)
    if output != "-" and Path(output).is_dir():
        _fail(f"--output {output}: is a folder; name a file in it", 2)
    dev = _device(device)
    (src, src_name), (ref, ref_name) = open_input(input), open_input(reference)
    model, cfg, codecs = load_for_inference(checkpoint, dev)
    codecs = for_direction(codecs, cfg.data, cfg.data.directions[0])  # a multilingual model: its main direction
    alpha = cfg.decode.length_penalty if length_penalty is None else length_penalty
    pairs = paired_lines(
        read_bounded_lines(src, src_name, max_line_bytes),
        read_bounded_lines(ref, ref_name, max_line_bytes),
        src_name,
        ref_name,
    )
    with sigterm_raises(), src, ref, output_writer(output) as write:
        n = score_stream(
            model, codecs, chunked(pairs, chunk_lines, size=lambda p: len(p[0]) + len(p[1])), write, dev, alpha
        )
    if output != "-":
        _say(f"wrote {n} scores to {output}")


@app.command()
def export(
    checkpoint: str = typer.Option(..., "--checkpoint", help="A .pt checkpoint from mt train."),
    format: str = typer.Option("ctranslate2", "--format", help="Export format (ctranslate2)."),
    quantization: str = typer.Option("float32", "--quantization", help="int8, int8_float16, float16 or float32."),
    output: str = typer.Option(..., "--output", "-o", help="New folder for the exported model."),
):
    """Export a checkpoint for deployment: a CTranslate2 model folder with its tokenizers and config."""
    import torch

    from mt_cli.checkpoint import load_for_inference
    from mt_cli.export import export_ctranslate2

    if format != "ctranslate2":
        _fail(f"--format {format}: only ctranslate2 is supported", 2)
    _refuse_overwrite({"--output": output}, {"--checkpoint": checkpoint})
    try:
        import ctranslate2  # noqa: F401 - an optional extra: say how to install it, not ImportError
    except ImportError:
        _fail("--format ctranslate2 needs CTranslate2: pip install 'mt-cli[ctranslate2]'", 2)
    model, cfg, codecs = load_for_inference(checkpoint, torch.device("cpu"))
    typer.echo(f"exported {export_ctranslate2(model, cfg, codecs, output, quantization)} ({quantization})")


@app.command()
def serve(
    checkpoint: List[str] = CheckpointsOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    device: str = DeviceOpt,
    max_lines: int = typer.Option(64, "--max-lines", help="Most lines one request may send."),
    max_chars: int = typer.Option(2000, "--max-chars", help="Longest line accepted, in characters."),
    max_batch: int = typer.Option(64, "--max-batch", help="Most lines of concurrent requests decoded together."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a request waits for others to batch."),
):
    """Serve translations over HTTP: POST /translate {"text": [...], "beam": k, "nbest": n}, GET /health, /info."""
    try:
        import fastapi  # noqa: F401 - an optional extra: say how to install it, not ImportError
        import uvicorn  # noqa: F401
    except ImportError:
        _fail("mt serve needs FastAPI and uvicorn: pip install 'mt-cli[serve]'", 2)
    from mt_cli.serve import Limits, load_engine
    from mt_cli.serve import serve as run_server

    for name, value in (("--max-lines", max_lines), ("--max-chars", max_chars), ("--max-batch", max_batch)):
        if value < 1:
            _fail(f"{name} {value}: must be >= 1", 2)
    if not 0 <= max_wait_ms <= 10_000 or not 0 <= port <= 65535:
        _fail(f"--max-wait-ms {max_wait_ms} / --port {port}: must be in [0, 10000] / [0, 65535]", 2)
    engine = load_engine(checkpoint, _device(device))
    _say(f"serving {' + '.join(checkpoint)} ({engine.src_lang}→{engine.tgt_lang}) on http://{host}:{port}")
    stopped_by = run_server(engine, Limits(max_lines, max_chars, max_batch, max_wait_ms), host, port)
    _say(f"stopped{f' on {stopped_by}' if stopped_by else ''}")


def main() -> None:
    """Entry point: known failures become one line on stderr and a non-zero exit, never a traceback."""
    from mt_cli.errors import run_reporting_errors

    run_reporting_errors(app)


if __name__ == "__main__":
    main()
