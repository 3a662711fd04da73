"""The data section of the configuration: which corpus, which languages and directions, how it is tokenized
and cleaned; its fingerprint names the prepared corpus."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal, Optional

from mt_cli.config.checks import MAX_SUBWORD_SAMPLES, _check, _check_float
from mt_cli.safe_parse import short


@dataclass
class DataConfig:
    corpus: Literal["multi30k", "files"] = "multi30k"
    src_lang: str = "de"
    tgt_lang: str = "en"
    root: str = "data"
    name: Optional[str] = None
    train: Optional[str] = None
    valid: Optional[str] = None
    test: list[str] = field(default_factory=list)
    lowercase: bool = False  # natural case, scored with cased sacreBLEU (true: to compare with papers that do)
    tokenizer: Literal["spacy", "sentencepiece"] = "spacy"
    sp_type: Literal["bpe", "unigram"] = "bpe"
    sp_vocab_size: int = 8000
    joint_vocab: bool = False
    min_freq: int = 2
    max_size: Optional[int] = None
    max_len: int = 256
    sp_sample: int = 1_000_000  # sentences sentencepiece trains on: a random sample when the training text has more
    max_ratio: Optional[float] = None  # training pairs whose longer side has more than this x the tokens: skipped
    dedup: bool = False  # training pairs that repeat an earlier one (after normalization): skipped
    drop_identical: bool = False  # training pairs whose two sides are the same text: skipped
    resident_max_mb: int = 1024  # a split whose padded matrices fit stays on the device; larger ones are streamed
    pairs: list[str] = field(default_factory=list)  # Multi30k directions trained together; the first is the main
    subword_samples: int = 0  # extra segmentations of the training split, sampled at prepare time (0: none)
    subword_alpha: float = 0.1  # their sampling: BPE-dropout probability (bpe) or smoothing alpha (unigram)

    def validate(self) -> None:
        langs = ("de", "en", "fr", "cs")
        if self.pairs:
            self._validate_pairs(langs)
        if self.corpus == "multi30k":
            for k in ("src_lang", "tgt_lang"):
                _check(
                    getattr(self, k) in langs,
                    f"data.{k}",
                    f"Multi30k has {', '.join(langs)}, not {short(getattr(self, k))}",
                )
        else:
            _check(
                bool(self.train) and bool(self.valid),
                "data.train",
                "corpus 'files' needs data.train and data.valid (a TSV file or a 'prefix' with .<lang> files)",
            )
        _check(self.src_lang != self.tgt_lang, "data.tgt_lang", "must differ from data.src_lang")
        _check(self.min_freq >= 1, "data.min_freq", "must be >= 1")
        _check(self.max_size is None or self.max_size >= 1, "data.max_size", "must be >= 1 or null")
        _check(8 <= self.max_len <= 4096, "data.max_len", "must be in [8, 4096]")
        _check(100 <= self.sp_vocab_size <= 100_000, "data.sp_vocab_size", "must be in [100, 100000]")
        _check(1000 <= self.sp_sample <= 100_000_000, "data.sp_sample", "must be in [1000, 100000000]")
        _check(
            self.max_ratio is None or 1.0 <= self.max_ratio <= 1000.0,
            "data.max_ratio",
            "must be a number in [1, 1000] or null",
        )
        _check(self.resident_max_mb >= 0, "data.resident_max_mb", "must be >= 0 (0: always stream)")
        _check(
            0 <= self.subword_samples <= MAX_SUBWORD_SAMPLES,
            "data.subword_samples",
            f"must be in [0, {MAX_SUBWORD_SAMPLES}]",
        )
        _check(
            not self.subword_samples or self.tokenizer == "sentencepiece",
            "data.subword_samples",
            "samples segmentations of a sentencepiece model: needs data.tokenizer: sentencepiece",
        )
        _check_float(self.subword_alpha, "data.subword_alpha", 0.0, 1.0, low_open=True, high_open=True)

    def _validate_pairs(self, langs: tuple[str, ...]) -> None:
        """data.pairs: distinct "xx-yy" Multi30k directions, one joint sentencepiece vocabulary; the first pair
        becomes data.src_lang / data.tgt_lang (validation, and translation by default)."""
        _check(self.corpus == "multi30k", "data.pairs", "trains several Multi30k directions: needs corpus multi30k")
        _check(len(set(self.pairs)) == len(self.pairs), "data.pairs", "names a direction twice")
        for pair in self.pairs:
            src, _, tgt = str(pair).partition("-")
            _check(
                src in langs and tgt in langs and src != tgt,
                "data.pairs",
                f"{short(pair)}: write a direction as src-tgt over {', '.join(langs)} (e.g. de-en)",
            )
        _check(
            self.tokenizer == "sentencepiece" and self.joint_vocab,
            "data.joint_vocab",
            "data.pairs trains one joint sentencepiece vocabulary: set data.tokenizer: sentencepiece and "
            "data.joint_vocab: true",
        )
        self.src_lang, self.tgt_lang = self.pairs[0].split("-")

    @property
    def directions(self) -> list[tuple[str, str]]:
        """(source, target) language of every direction the corpus trains, the main one first."""
        return [tuple(p.split("-")) for p in self.pairs] or [(self.src_lang, self.tgt_lang)]

    def target_tag(self, tgt_lang: str) -> str | None:
        """The token that asks for `tgt_lang` at the start of a source sentence, where more than one target
        language occurs (fairseq's and OpenNMT's language tags); else None."""
        return f"<2{tgt_lang}>" if len({t for _, t in self.directions}) > 1 else None

    @property
    def corpus_name(self) -> str:
        """Folder name under data/: what the corpus holds plus a short hash of the data config, so
        configs that differ in any data setting never overwrite each other's corpus."""
        if self.name:
            return self.name
        tok = (
            "word"
            if self.tokenizer == "spacy"
            else f"{self.sp_type}{self.sp_vocab_size}{'j' if self.joint_vocab else ''}"
        )
        case = ".lc" if self.lowercase else ""
        langs = "+".join(self.pairs) if len(self.pairs) > 1 else f"{self.src_lang}_{self.tgt_lang}"
        return f"{self.corpus}_{langs}.{tok}{case}.{self.fingerprint()[:6]}"

    def fingerprint(self) -> str:
        """Hash of every setting that changes the prepared corpus."""
        d = dataclasses.asdict(self)
        d.pop("root")
        d.pop("resident_max_mb")  # how training reads the corpus, not what it holds
        defaults = DataConfig()
        for k in ("sp_sample", "max_ratio", "dedup", "drop_identical", "subword_samples", "subword_alpha", "pairs"):
            if d[k] == getattr(defaults, k):  # newer keys: at their default, corpora keep the fingerprint they had
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
