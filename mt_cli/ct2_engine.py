"""The CTranslate2 engine: a folder written by `mt export` decoded by CTranslate2, behind the same
`translate_ids` call as mt_cli's own search, with the same tokenization, length limits and length penalty.

How CTranslate2's search is made to give mt_cli's results:
- length penalty: CTranslate2 divides a finished hypothesis' log-probability by len^α; mt_cli's beam
  (GNMT) by ((5 + len) / 6)^α, len counting <eos>. The engine asks for raw scores (length_penalty 0) of
  every finished hypothesis (num_hypotheses = beam) and ranks them by GNMT itself.
- stopping: both finish a sentence once `beam` hypotheses have ended (CTranslate2's patience 1).
- length limit: mt_cli forces <eos> at max_len_a * len + max_len_b tokens, <eos> included; CTranslate2
  counts tokens without <eos>, so it gets that limit minus one.
- empty output: neither ends a hypothesis at its first token (min_decoding_length 1).
What still differs: the beams themselves. CTranslate2 takes an ended hypothesis out of its beam; mt_cli's
keeps choosing among the best 2 x beam candidates, so the two can find different hypotheses (greedy
output is identical)."""

from __future__ import annotations

from pathlib import Path

import torch

from mt_cli.checkpoint import CheckpointError, load_models
from mt_cli.config import Config, DecodeConfig, config_from_dict
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import PAD
from mt_cli.decode import length_penalty
from mt_cli.export import CODECS_FILE, CONFIG_FILE
from mt_cli.safe_parse import load_json
from mt_cli.torch_io import safe_load


def is_exported(path: str | Path) -> bool:
    """Whether `path` is a folder written by `mt export --format ctranslate2`."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file() and (Path(path) / "model.bin").is_file()


class CTranslate2Model:
    """An exported model: `translate_ids` as mt_cli.decode's, `max_positions` as the Transformer's."""

    max_positions: int | None = None  # as the Transformer's: learned positions end, sinusoids do not (None)

    def __init__(self, folder: str | Path, device: torch.device, codecs: dict, threads: int | None = None):
        import ctranslate2

        kind = "cuda" if device.type == "cuda" else "cpu"
        threads = torch.get_num_threads() if threads is None else threads  # as many as torch: one per core
        self.translator = ctranslate2.Translator(
            str(folder), device=kind, device_index=device.index or 0, intra_threads=threads
        )
        self.codecs, self.device = codecs, device
        self.seeded = False

    def translate_ids(self, sources, cfg: DecodeConfig, beam_size: int | None = None, sampler=None, progress=None):
        """Per source (1-D id tensors ending in <eos>), its n-best [(ids, score)]; greedy and sampled outputs
        score 0.0 as in mt_cli.decode."""
        k = beam_size or cfg.beam_size
        pieces = [self.codecs["src"].pieces([int(i) for i in s if int(i) != PAD]) for s in sources]
        limits = [int(len(p) * cfg.max_len_a + cfg.max_len_b) for p in pieces]  # p ends in <eos>, as ours
        results: list = [None] * len(pieces)
        for rows in _batches(limits, cfg.batch_size, same_limit=sampler is None and k > 1):
            out = self._translate([pieces[j] for j in rows], cfg, k, max(limits[j] for j in rows), sampler)
            for j, hyps in zip(rows, out):
                # one token-by-token path: a shorter limit would have forced <eos> there, i.e. cut the same path
                results[j] = [(ids[: limits[j] - 1], score) for ids, score in hyps] if k == 1 else hyps
            if progress is not None:
                progress(len(rows))
        return results

    def _translate(self, batch: list[list[str]], cfg: DecodeConfig, k: int, limit: int, sampler):
        options = dict(max_decoding_length=max(1, limit - 1), min_decoding_length=1 if limit > 1 else 0)
        if sampler is not None:
            if not self.seeded:  # one seeded generator for the run, as mt_cli's Sampler
                import ctranslate2

                ctranslate2.set_random_seed(sampler.seed)
                self.seeded = True
            top_k, top_p = (int(sampler.value), 1.0) if sampler.kind == "topk" else (0, float(sampler.value))
            options.update(beam_size=1, sampling_topk=top_k, sampling_topp=top_p)
        else:
            options.update(beam_size=k, num_hypotheses=k, length_penalty=0.0, return_scores=True, patience=1)
        out = self.translator.translate_batch(batch, **options)
        stoi = self.codecs["tgt"].vocab.stoi
        hyps = []
        for res in out:
            ranked = [
                ([stoi[t] for t in tokens], score / length_penalty(len(tokens) + 1, cfg.length_penalty))
                for tokens, score in zip(res.hypotheses, res.scores or [0.0] * len(res.hypotheses))
            ]
            if sampler is None and k == 1:
                ranked = [(ids, 0.0) for ids, _ in ranked]
            ranked.sort(key=lambda h: -h[1])
            hyps.append(ranked[: max(1, cfg.nbest if k > 1 else 1)])
        return hyps


def _batches(limits: list[int], size: int, same_limit: bool) -> list[list[int]]:
    """Source indices in batches of `size`, by length limit (CTranslate2 takes one limit per call). A beam
    search needs one limit per batch; greedy and sampled paths can be cut to each sentence's own limit."""
    order = sorted(range(len(limits)), key=lambda j: limits[j])
    batches, current = [], []
    for j in order:
        if current and (len(current) == size or (same_limit and limits[j] != limits[current[0]])):
            batches.append(current)
            current = []
        current.append(j)
    return batches + ([current] if current else [])


def load_translator(paths: str | Path | list, device: torch.device):
    """(model, config, codecs) to translate with: a folder from `mt export` runs on CTranslate2, a checkpoint on
    PyTorch, several checkpoints as their ensemble. Only translation takes a folder (mt translate, mt serve);
    scoring, evaluation and export need weights."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    exported = [p for p in paths if is_exported(p)]
    if exported and len(paths) > 1:
        raise CheckpointError(f"{exported[0]}: an exported folder translates alone; an ensemble takes .pt checkpoints")
    if exported:
        return load_exported(exported[0], device)
    return load_models(paths, device)


def load_exported(folder: str | Path, device: torch.device) -> tuple[CTranslate2Model, Config, dict]:
    """(engine, config, codecs) of an exported folder."""
    folder = Path(folder)
    meta = load_json(folder / CONFIG_FILE, what="exported model config")
    cfg = config_from_dict(meta["config"])
    state = safe_load(folder / CODECS_FILE, "exported tokenizers", fix="export the checkpoint again")
    codecs = {side: SideCodec.from_state(state[side]) for side in ("src", "tgt")}
    engine = CTranslate2Model(folder, device, codecs)
    engine.max_positions = cfg.model.max_positions if cfg.model.positional == "learned" else None
    return engine, cfg, codecs
