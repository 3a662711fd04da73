"""Scoring real decoded output (mt_cli/metrics.py: cased sacreBLEU, lowercased BLEU, chrF, TER), evaluation reports, the
validation loss, and the final test of a training run."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mt_cli import distributed
from mt_cli.atomic import write_json, write_text
from mt_cli.averaging import average_checkpoints, epoch_checkpoints
from mt_cli.checkpoint import load_checkpoint, restore
from mt_cli.config import Config
from mt_cli.data.arrays import has_split, split_names
from mt_cli.data.batching import Split, batch_plan, iterate
from mt_cli.data.multilingual import split_langs
from mt_cli.data.prepare import corpus_dir
from mt_cli.data.sources import DataError, read_lines
from mt_cli.data.vocab import PAD
from mt_cli.decode import autocast_for, translate_ids
from mt_cli.metrics import format_table, score  # noqa: F401 - format_table: the CLI's table of these reports
from mt_cli.safe_parse import read_json_or_none
from mt_cli.steps import loss_sum


@torch.no_grad()
def validation_loss(model, split: Split, cfg: Config, device, amp_dtype) -> float:
    """Token-level cross-entropy (no label smoothing) on the validation split; with several processes,
    each scores a disjoint share (no wrap-around, so no sentence counts twice) and the sums are reduced.
    `model` is the plain module, never the DDP wrapper: shares may differ in length by one batch."""
    model.eval()
    total = torch.zeros(2, device=device)
    plan = batch_plan(split, None, cfg.train.max_tokens or 4096, shuffle=False, fill=False)
    plan = plan[distributed.rank() :: distributed.world()]
    for b in iterate(split, plan, device):
        with autocast_for(device, amp_dtype):
            loss, n = loss_sum(model, b.src, b.tgt_in, b.tgt_out, 0.0)
        total += torch.stack([loss.float(), n.float()])
    model.train()
    total = distributed.all_reduce_sum(total)
    return (total[0] / total[1].clamp(min=1)).item()


def load_eval_split(cfg: Config, split: str) -> tuple[Split, list[str]]:
    """A prepared split: ids and references (normalized like training)."""
    folder = corpus_dir(cfg.data)
    if not has_split(folder, split):
        have = split_names(folder)
        hint = (
            f"available: {', '.join(have)}"
            if have
            else "run `mt prepare` with this config first, or point --data-root at the folder holding it"
        )
        raise DataError(f"{folder}: no split {split!r} ({hint})")
    data = Split(folder / split, cfg.train.bucket_width, resident_max_mb=cfg.data.resident_max_mb)
    _, tgt_lang = split_langs(cfg.data, split)  # a multilingual corpus: the split's own direction
    return data, read_lines(folder / f"{split}.ref.{tgt_lang}")


def decode_rows(model, src: torch.Tensor, cfg: Config, device, beam_size: int, amp_dtype=None) -> list:
    """n-best [(ids, score)] of padded source rows, on PyTorch or (an exported folder) on CTranslate2."""
    if hasattr(model, "translate_ids"):  # the CTranslate2 engine: it takes 1-D rows, and batches them itself
        return model.translate_ids([row[row != PAD] for row in src.cpu()], cfg.decode, beam_size)
    return translate_ids(model, src, cfg.decode, device, beam_size=beam_size, amp_dtype=amp_dtype)


def decode_split(model, codecs, cfg: Config, data: Split, device, beam_size: int, amp_dtype=None) -> list[str]:
    results = decode_rows(model, data.source_rows(torch.arange(len(data))), cfg, device, beam_size, amp_dtype)
    return [codecs["tgt"].decode(r[0][0]) for r in results]


def report_files(splits: list[str], tag: str, beam_size: int) -> list[str]:
    """The names evaluate_splits writes into its folder: one hypothesis file per split, then the report."""
    return [f"{split}{tag}.beam{beam_size}.hyp" for split in splits] + [f"eval{tag}.beam{beam_size}.json"]


def evaluate_splits(
    model,
    codecs,
    cfg: Config,
    splits: list[str],
    device,
    beam_size: int,
    out_dir: Path | None,
    amp_dtype=None,
    log=print,
    tag: str = "",
    checkpoint: str | list[str] | None = None,
) -> dict:
    """Decode and score each split; write hypotheses and a JSON report under out_dir (an existing report
    of the same tag and beam keeps its other splits if they come from the same checkpoint file). Every split
    is checked before any decoding, and the files are written only once all splits are done."""
    made = None
    if checkpoint:  # which file, as of when: a retrained best.pt must not share a report with the old one
        from datetime import datetime

        files = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
        checkpoint = " + ".join(str(f) for f in files)  # an ensemble: all of its members
        made = " + ".join(datetime.fromtimestamp(Path(f).stat().st_mtime).isoformat() for f in files)
    loaded = {split: load_eval_split(cfg, split) for split in splits}  # a bad --split fails before any work
    report, hyps = {}, {}
    for split, (data, refs) in loaded.items():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        hyps[split] = decode_split(model, codecs, cfg, data, device, beam_size, amp_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        res = score(hyps[split], refs, cfg.data.lowercase)
        res.update(
            {
                "beam_size": beam_size,
                "engine": "ctranslate2" if hasattr(model, "translate_ids") else "pytorch",
                "seconds": round(secs, 3),
                "sentences_per_s": round(len(hyps[split]) / max(secs, 1e-9), 1),
            }
        )
        if checkpoint:
            res.update(checkpoint=checkpoint, checkpoint_modified=made)
        report[split] = res
        log(
            f"{split}: BLEU {res['bleu']:.2f} (lc {res['bleu_lc']:.2f})  chrF {res['chrf']:.2f}  TER {res['ter']:.2f}  "
            f"({len(hyps[split])} sentences, beam "
            f"{beam_size}, {res['sentences_per_s']:.0f} sent/s)"
        )
    if out_dir is not None and report:
        _write_reports(Path(out_dir), report, hyps, tag, beam_size, (checkpoint, made))
    return report


def _write_reports(out_dir: Path, report: dict, hyps: dict, tag: str, beam_size: int, source: tuple) -> None:
    """The hypothesis files and the JSON report, all or none of the new ones: a failed write removes the
    files this call created (those it replaced are whole, old or new)."""
    names = report_files(list(report), tag, beam_size)
    path = out_dir / names[-1]
    earlier = read_json_or_none(path)
    same = {
        k: v
        for k, v in (earlier.items() if isinstance(earlier, dict) else ())
        if isinstance(v, dict) and (v.get("checkpoint"), v.get("checkpoint_modified")) == source
    }
    created = []
    try:
        for split, name in zip(report, names):
            created += [] if (out_dir / name).exists() else [out_dir / name]
            write_text(out_dir / name, "".join(h + "\n" for h in hyps[split]))
        created += [] if path.exists() else [path]
        write_json(path, {**same, **report})
    except BaseException:
        for p in created:
            p.unlink(missing_ok=True)
        raise


def final_test(cfg: Config, saved_dir: Path, result_dir: Path, dev, amp_dtype, log) -> dict:
    """Average the last epochs if configured; test the average, or best.pt where it scores higher on the
    validation set (an early-stopped run averages epochs after its best); every test split, configured beam."""
    best, beam = saved_dir / "best.pt", cfg.decode.beam_size
    if not best.is_file():
        log(
            f"no {best.name}: no epoch improved {cfg.train.best_metric} (was it ever finite?); the final test "
            f"was skipped"
        )
        return {}

    def load(p: Path):
        model, _, codecs = restore(load_checkpoint(p), p)
        return model.to(dev).eval(), codecs

    path, chosen, loaded = best, None, {}
    if cfg.train.average_last and epoch_checkpoints(saved_dir):
        avg = average_checkpoints(epoch_checkpoints(saved_dir)[-cfg.train.average_last :], saved_dir / "averaged.pt")
        log(f"averaged the last {min(cfg.train.average_last, len(epoch_checkpoints(saved_dir)))} epochs -> {avg}")
        loaded = {p: load(p) for p in (avg, best)}
        chosen = {
            p.name: evaluate_splits(*loaded[p], cfg, ["valid"], dev, beam, None, amp_dtype, lambda *_: None)["valid"][
                "bleu"
            ]
            for p in loaded
        }
        path = avg if chosen[avg.name] >= chosen[best.name] else best
        log(f"valid BLEU with beam {beam}: {', '.join(f'{k} {v:.2f}' for k, v in chosen.items())} -> {path.name}")
    model, codecs = loaded.get(path) or load(path)
    tests = [s for s in split_names(corpus_dir(cfg.data)) if s.startswith("test")]
    log(f"testing {path.name} with beam {beam} on {', '.join(tests) or 'no test split'}")
    report = evaluate_splits(model, codecs, cfg, ["valid"] + tests, dev, beam, result_dir, amp_dtype, log, tag="")
    return {"checkpoint": str(path), **({"valid_bleu_of": chosen} if chosen else {}), **report}
