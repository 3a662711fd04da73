"""The experiment configuration: typed dataclasses with their validation (loading is in config.load)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from mt_cli.config.checks import (  # noqa: F401 - MAX_INT, _check_folder_name: re-exported for config.load
    MAX_BEAM,
    MAX_INT,
    MAX_LEN_A,
    MAX_LENGTH_PENALTY,
    MAX_LR,
    ConfigError,
    _check,
    _check_float,
    _check_folder_name,
)
from mt_cli.config.data import DataConfig


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
