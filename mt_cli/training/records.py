"""One epoch's figures: the line in result/<run>/metrics.jsonl and the line on the console."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from mt_cli.steps import StepTotals


def perplexity(loss: float) -> float:
    return round(math.exp(min(loss, 50)), 3)  # capped: a diverging run's loss must not overflow the log


@dataclass
class EpochRecord:
    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_ppl: float
    val_bleu: float | None  # cased sacreBLEU of greedy (val_beam_size) decoding; None with train.val_bleu: false
    val_bleu_lc: float | None  # the same output scored lowercased
    lr: float  # the learning rate the epoch trained with
    seconds: float  # training time of the epoch
    val_seconds: float
    tokens_per_s: int  # source + target non-pad tokens, all processes
    tgt_tokens_per_s: int
    elapsed: float  # training time of the run so far
    steps: int
    skipped: int
    processes: int | None = None  # set with several processes, with the weights hash they agreed on
    weights_sha256: str | None = None

    @classmethod
    def measure(cls, *, epoch: int, step: int, elapsed: float, totals: StepTotals, seconds: float, n_src: int,
                n_tgt: int, val_loss: float, val_bleu: float | None, val_bleu_lc: float | None, val_seconds: float,
                lr: float, world: int) -> EpochRecord:  # fmt: skip
        """An epoch's figures, rounded as the metrics line keeps them; throughput counts every process."""
        return cls(
            epoch=epoch, step=step, train_loss=round(totals.mean_loss, 4), val_loss=round(val_loss, 4),
            val_ppl=perplexity(val_loss), val_bleu=val_bleu, val_bleu_lc=val_bleu_lc, lr=lr,
            seconds=round(seconds, 2), val_seconds=round(val_seconds, 2),
            tokens_per_s=round((n_src + n_tgt) * world / seconds), tgt_tokens_per_s=round(n_tgt * world / seconds),
            elapsed=round(elapsed, 1), steps=int(totals.steps), skipped=int(totals.skipped))  # fmt: skip

    def metric(self, name: str) -> float | None:
        return self.val_bleu if name == "val_bleu" else self.val_loss

    def to_dict(self) -> dict:
        """The metrics line (JSON keys as the README documents them)."""
        out = asdict(self)
        order = [
            "epoch",
            "step",
            "train_loss",
            "val_loss",
            "val_ppl",
            "val_bleu",
            "val_bleu_lc",
            "lr",
            "seconds",
            "val_seconds",
            "tokens_per_s",
            "tgt_tokens_per_s",
            "elapsed",
            "steps",
            "skipped",
            "processes",
            "weights_sha256",
        ]
        return {k: out[k] for k in order if out[k] is not None or k in ("val_bleu", "val_bleu_lc")}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def console_line(self, improved: bool) -> str:
        bleu = f"  val BLEU {self.val_bleu:.2f} (lc {self.val_bleu_lc:.2f})" if self.val_bleu is not None else ""
        return (
            f"epoch {self.epoch:3d}  train {self.train_loss:.3f}  val {self.val_loss:.3f} (ppl {self.val_ppl:.2f})"
            f"{bleu}  lr {self.lr:.2e}  {self.seconds:.1f}s+{self.val_seconds:.1f}s  "
            f"{self.tgt_tokens_per_s / 1000:.1f}k tgt tok/s{'  *' if improved else ''}"
        )
