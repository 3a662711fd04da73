"""`mt translate`: raw text in, translations out, in length-sorted batches, order and empty lines kept."""
from __future__ import annotations

import torch
from tqdm import tqdm

from mt_cli.config import Config
from mt_cli.data.vocab import EOS
from mt_cli.decode import translate_ids


def translate_lines(model, cfg: Config, codecs: dict, lines: list[str], device, beam_size: int | None = None,
                    nbest: int = 1, amp_dtype=None, show_progress: bool = False,
                    warn=print, ids_out: list | None = None) -> list[list[str]]:
    """Translate each line; an empty line gives an empty translation. Returns n-best lists of text.
    With `ids_out`, (line index, source ids, best hypothesis ids) of each non-empty line are appended to it."""
    keep = [i for i, line in enumerate(lines) if line.strip()]
    src_ids = codecs["src"].encode([lines[i] for i in keep])
    long = [keep[j] + 1 for j, ids in enumerate(src_ids) if len(ids) > cfg.data.max_len]
    if long:
        warn(f"warning: {len(long)} input line(s) longer than the training max_len={cfg.data.max_len} tokens "
             f"(first: line {long[0]}); translated in full, quality may suffer")
    limit = model.max_positions
    too_long = [keep[j] + 1 for j, ids in enumerate(src_ids) if limit is not None and len(ids) + 1 > limit]
    if too_long:
        raise ValueError(f"input line {too_long[0]} is longer than the model's {limit} learned positions "
                         f"({len(too_long)} such line(s)); split it")
    sources = [torch.tensor(ids + [EOS], dtype=torch.long) for ids in src_ids]
    dec = cfg.decode
    if nbest > 1:
        from dataclasses import replace

        dec = replace(cfg.decode, nbest=nbest)
    bar = tqdm(total=len(sources), unit="sent", disable=not show_progress, leave=False)
    try:
        results = translate_ids(model, sources, dec, device, beam_size=beam_size, amp_dtype=amp_dtype,
                                progress=bar.update) if sources else []
    finally:
        bar.close()
    out: list[list[str]] = [[""] * nbest for _ in lines]
    for i, src, hyps in zip(keep, src_ids, results):
        if ids_out is not None:
            ids_out.append((i, src, hyps[0][0]))
        texts = [codecs["tgt"].decode(ids) for ids, _ in hyps]
        out[i] = (texts + [texts[-1]] * nbest)[:nbest]
    return out
