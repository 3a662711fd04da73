"""Commands that measure models: mt evaluate, bench and score."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mt_cli.cli.shared import (
    AttnHeadsOpt,
    AttnLayerOpt,
    CheckpointsOpt,
    ConfigOpt,
    DeviceOpt,
    SetOpt,
    _amp,
    _attention_setup,
    _check_beam,
    _device,
    _fail,
    _load,
    _refuse_overwrite,
    _say,
    app,
)


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
    from mt_cli.ct2_engine import is_exported
    from mt_cli.evaluate import load_eval_split

    dev = _device(device)
    path = Path(out) if out else Path("result") / "bench" / f"{cfg.name}.json"
    _refuse_overwrite({"--out": path}, {"--config": config, "--checkpoint": checkpoint})
    check_writable(path.parent)
    model, tcfg, codecs = _bench_checkpoint(checkpoint, cfg, set_)
    load_eval_split(tcfg, split)  # so does an unknown split
    report = {"config": config, "overrides": set_ or [], **environment(dev)}
    report["training"] = bench_training(cfg, dev, steps, log=_say) if training else None
    if training:
        _say(
            f"training: {report['training']['tokens_per_s']:,} src+tgt tok/s, "
            f"{report['training']['tgt_tokens_per_s']:,} tgt tok/s"
        )
    exported = bool(checkpoint) and is_exported(checkpoint)
    model, codecs = _bench_translator(cfg, checkpoint, exported, model, codecs, dev)
    report["translation_model"] = checkpoint or "untrained"
    report["translation_engine"] = "ctranslate2" if exported else "pytorch"
    report["translation"] = bench_translation(model, tcfg, codecs, dev, split, [1, 5])
    if dev.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
    write_json(path, report)
    typer.echo(json.dumps({k: report[k] for k in ("device", "training", "translation")}, indent=1))
    typer.echo(f"saved {path}")


def _bench_checkpoint(checkpoint, cfg, set_):
    """(model or None, its config with any --set decode.*, codecs or None) of mt bench's --checkpoint."""
    if not checkpoint:
        return None, cfg, None
    import torch

    from mt_cli.ct2_engine import load_translator

    # a bad checkpoint fails before the timing; on the CPU until then, out of the training memory peak
    model, tcfg, codecs = load_translator(checkpoint, torch.device("cpu"))
    decode_sets = [s for s in set_ or [] if s.strip().startswith("decode.")]
    if decode_sets:  # --set decode.* applies to the checkpoint's config too
        from mt_cli.config import config_from_dict

        tcfg = config_from_dict(tcfg.to_dict(), decode_sets)
    return model, tcfg, codecs


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
