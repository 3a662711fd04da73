"""The experiment configuration: typed dataclasses with their validation (loading is in config.load)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from mt_cli.safe_parse import short


class ConfigError(ValueError):
    """A config problem, reported to users as one line naming the key (and file)."""


MAX_INT = 10**12  # any integer key: larger is a typo (or hostile), and would fail deep inside torch
MAX_BEAM = 64  # beam sizes above this are a typo, and would exhaust memory
MAX_NAME_BYTES = 200  # file systems allow 255 bytes per name; runs may add -2, -3, …
MAX_LR = 1e9  # a ceiling against typos only: absurd but finite rates are how the divergence handling is tested
MAX_LENGTH_PENALTY = 5.0  # GNMT alpha: 0-2 in practice; the penalty ((5+len)/6)^alpha overflows beyond
MAX_SUBWORD_SAMPLES = 64  # each is a copy of the training split on disk
MAX_LEN_A = 10.0  # outputs of 10x the source length are runaway decoding (they stop at model.max_positions)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        e = ConfigError(f"{key}: {msg}")
        e.key = key
        raise e


def _check_float(
    value: float,
    key: str,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    high_name: str = "",
) -> None:
    """A float key: finite and in its range (the README's config table states each range)."""
    above = value > low if low_open else value >= low
    below = high is None or (value < high if high_open else value <= high)
    upper = "inf)" if high is None else f"{high_name or f'{high:g}'}{')' if high_open else ']'}"
    _check(
        math.isfinite(value) and above and below,
        key,
        f"must be a finite number in {'(' if low_open else '['}{low:g}, {upper}, got {short(value)}",
    )


def _check_folder_name(name: str | None, key: str) -> None:
    """Run and corpus names become folder names: one plain path component, short enough for any file system."""
    _check(
        name is None or (bool(re.fullmatch(r"[\w.+=-]+", name)) and not name.startswith(".")),
        key,
        f"{short(name)} must be a plain folder name (letters, digits, . _ - + =; no / and not starting with .)",
    )
    _check(
        name is None or len(name.encode("utf-8")) <= MAX_NAME_BYTES,
        key,
        f"{short(name)} is too long for a folder name (at most {MAX_NAME_BYTES} bytes)",
    )


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


@dataclass
class ModelConfig:
    d_model: int = 256
    n_heads: int = 8
    enc_layers: int = 3
    dec_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attn_dropout: float = 0.0
    norm: Literal["post", "pre"] = "post"
    attention: Literal["scaled_dot", "dot", "additive", "bilinear"] = "scaled_dot"
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = 1024
    tie_output: bool = False
    share_embeddings: bool = False

    def validate(self) -> None:
        _check(8 <= self.d_model <= 65536, "model.d_model", "must be in [8, 65536]")
        _check(
            1 <= self.n_heads <= self.d_model and self.d_model % self.n_heads == 0,
            "model.n_heads",
            f"must divide model.d_model ({self.d_model})",
        )
        # sizes far beyond any Transformer that fits in memory: refused here rather than by the allocator
        for k, high in (("enc_layers", 256), ("dec_layers", 256), ("d_ff", 262144), ("max_positions", 1 << 20)):
            _check(1 <= getattr(self, k) <= high, f"model.{k}", f"must be in [1, {high}]")
        for k in ("dropout", "attn_dropout"):
            _check_float(getattr(self, k), f"model.{k}", 0.0, 1.0, high_open=True)


@dataclass
class TrainConfig:
    seed: int = 1234
    epochs: int = 30
    max_steps: Optional[int] = None
    batch_sentences: Optional[int] = None
    max_tokens: Optional[int] = 4096
    bucket_width: int = 8
    accumulate: int = 1  # batches whose gradients are summed into one update
    init_from: Optional[str] = None  # a checkpoint whose weights a new run starts from (fine-tuning)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    clip: float = 1.0
    label_smoothing: float = 0.1
    scheduler: Literal["plateau", "inverse_sqrt", "cosine", "constant"] = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    warmup_epochs: int = 0
    warmup_steps: int = 4000
    min_lr: float = 1e-6
    best_metric: Literal["val_loss", "val_bleu"] = "val_loss"
    early_stopping: Optional[int] = None
    average_last: int = 0
    keep_last: int = 1
    save_every: int = 2000  # steps between mid-epoch saves of last.pt (0: only at epoch ends)
    val_bleu: bool = True
    val_beam_size: int = 1
    max_nonfinite: int = 10
    max_oom: int = 5
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    cuda_graphs: bool = True
    compile: bool = False
    tensorboard: bool = False

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1 or null")
        _check(
            self.batch_sentences is not None or self.max_tokens is not None,
            "train.max_tokens",
            "set train.max_tokens or train.batch_sentences",
        )
        _check(self.batch_sentences is None or self.batch_sentences >= 1, "train.batch_sentences", "must be >= 1")
        _check(self.max_tokens is None or self.max_tokens >= 16, "train.max_tokens", "must be >= 16")
        _check(1 <= self.bucket_width <= 256, "train.bucket_width", "must be in [1, 256]")
        _check(1 <= self.accumulate <= 1024, "train.accumulate", "must be in [1, 1024]")
        _check_float(self.lr, "train.lr", 0.0, MAX_LR, low_open=True)
        # no tie to train.lr: a plateau schedule never raises the rate to min_lr, so min_lr > lr is harmless
        _check_float(self.min_lr, "train.min_lr", 0.0, MAX_LR)
        for i, beta in enumerate(self.betas):
            _check_float(beta, f"train.betas[{i}]", 0.0, 1.0, high_open=True)
        _check_float(self.eps, "train.eps", 0.0, 1.0, low_open=True)
        _check_float(self.weight_decay, "train.weight_decay", 0.0, 1.0)
        _check_float(self.clip, "train.clip", 0.0)  # 0 disables clipping
        _check_float(self.label_smoothing, "train.label_smoothing", 0.0, 1.0, high_open=True)
        _check_float(self.plateau_factor, "train.plateau_factor", 0.0, 1.0, low_open=True, high_open=True)
        for k in ("plateau_patience", "warmup_epochs", "average_last", "warmup_steps"):
            _check(getattr(self, k) >= 0, f"train.{k}", "must be >= 0")
        _check(self.keep_last >= 1, "train.keep_last", "must be >= 1")
        _check(self.save_every >= 0, "train.save_every", "must be >= 0 (0: save last.pt only at epoch ends)")
        _check(self.early_stopping is None or self.early_stopping >= 1, "train.early_stopping", "must be >= 1 or null")
        _check(1 <= self.val_beam_size <= MAX_BEAM, "train.val_beam_size", f"must be in [1, {MAX_BEAM}]")
        _check(0 <= self.seed < 2**32, "train.seed", "must be in [0, 2**32)")
        _check(
            self.val_bleu or self.best_metric != "val_bleu",
            "train.best_metric",
            "val_bleu needs train.val_bleu: true (or choose val_loss)",
        )
        _check(self.max_nonfinite >= 1, "train.max_nonfinite", "must be >= 1")
        _check(self.max_oom >= 1, "train.max_oom", "must be >= 1")


@dataclass
class DecodeConfig:
    beam_size: int = 5
    length_penalty: float = 1.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    batch_size: int = 500
    nbest: int = 1

    def validate(self) -> None:
        _check(1 <= self.beam_size <= MAX_BEAM, "decode.beam_size", f"must be in [1, {MAX_BEAM}]")
        _check_float(self.length_penalty, "decode.length_penalty", 0.0, MAX_LENGTH_PENALTY)
        _check_float(self.max_len_a, "decode.max_len_a", 0.0, MAX_LEN_A)
        _check(self.max_len_b >= 1, "decode.max_len_b", "must be >= 1")
        _check(self.batch_size >= 1, "decode.batch_size", "must be >= 1")
        _check(1 <= self.nbest <= self.beam_size, "decode.nbest", "must be in [1, decode.beam_size]")


@dataclass
class Config:
    name: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self) -> None:
        _check_folder_name(self.name, "name")
        _check_folder_name(self.data.name, "data.name")
        self.data.validate()
        self.model.validate()
        self.train.validate()
        self.decode.validate()
        if self.model.share_embeddings:
            _check(self.data.joint_vocab, "model.share_embeddings", "needs data.joint_vocab: true")
        if self.data.joint_vocab:
            _check(self.data.tokenizer == "sentencepiece", "data.joint_vocab", "needs data.tokenizer: sentencepiece")
        if self.model.positional == "learned":
            _check(
                self.model.max_positions >= self.data.max_len + 2,
                "model.max_positions",
                f"learned positions must cover data.max_len + 2 (<bos>/<eos>) = {self.data.max_len + 2}",
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
