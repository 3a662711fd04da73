"""Commands that use models: mt translate, export and serve."""

from __future__ import annotations

from typing import List, Optional

import typer

from mt_cli.cli.shared import (
    AttnHeadsOpt,
    AttnLayerOpt,
    CheckpointsOpt,
    ChunkLinesOpt,
    DeviceOpt,
    MapsDirOpt,
    SampleOpt,
    _amp,
    _attention_setup,
    _check_beam,
    _check_output_file,
    _device,
    _fail,
    _refuse_overwrite,
    _say,
    app,
)


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
