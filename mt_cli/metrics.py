"""Scores as the field reports them: cased sacreBLEU (13a, detokenized output) as the headline, with
lowercased BLEU, chrF and TER beside it, each with its sacreBLEU signature; and the table the CLI prints."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF, TER

# key, header, metric; BLEU and lowercased BLEU are cheap (~0.1 s per 1,000 sentences) and reported each epoch,
# chrF and TER (~0.2 s each) at the final test and by `mt evaluate`
METRICS = (("bleu", "BLEU", BLEU), ("bleu_lc", "BLEU lc", lambda: BLEU(lowercase=True)), ("chrf", "chrF", CHRF),
           ("ter", "TER", TER))  # fmt: skip
EPOCH_METRICS = ("bleu", "bleu_lc")


def score(hyps: list[str], refs: list[str], lowercased_corpus: bool, keys=tuple(k for k, _, _ in METRICS)) -> dict:
    """Corpus scores of `hyps` against `refs` (one reference each), rounded to 2 decimals, with signatures.
    On a lowercased corpus hypotheses and references are lowercase, so cased and lowercased BLEU agree."""
    out: dict = {"sentences": len(hyps), "lowercased_corpus": bool(lowercased_corpus)}
    for key, _, make in METRICS:
        if key in keys:
            metric = make()
            out[key] = round(metric.corpus_score(hyps, [refs]).score, 2)
            out[f"{key}_signature"] = str(metric.get_signature())
    return out


def format_table(report: dict) -> str:
    """One row per split (cased BLEU first), then each metric's signature."""
    rows = [f"{'split':<20} {'BLEU':>6} {'BLEU lc':>7} {'chrF':>6} {'TER':>6} {'beam':>4} {'sent/s':>8}"]
    for split, r in report.items():
        cells = [f"{r.get(key, float('nan')):>{max(6, len(head))}.2f}" for key, head, _ in METRICS]
        rows.append(f"{split:<20} {' '.join(cells)} {r['beam_size']:>4} {r['sentences_per_s']:>8.0f}")
    first = next(iter(report.values()), {})
    for key, head, _ in METRICS:
        if f"{key}_signature" in first:
            rows.append(f"{head} signature: {first[f'{key}_signature']}")
    if first.get("lowercased_corpus"):
        rows.append("(a lowercased corpus: its cased and lowercased BLEU are the same number)")
    return "\n".join(rows)
