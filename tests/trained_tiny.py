"""A tiny model that has memorized 48 real Multi30k pairs, so its translations differ from line to line
(an untrained model says the same words to everything, which hides order bugs). Trained once per process
with a plain teacher-forced loop (independent of mt train), saved as a real checkpoint."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from mt_cli.checkpoint import save_checkpoint
from mt_cli.config import config_from_dict
from mt_cli.data.prepare import prepare_corpus
from mt_cli.data.tokenize import SideCodec
from mt_cli.data.vocab import BOS, EOS, PAD
from mt_cli.decode import greedy_search
from mt_cli.model import build_model

N_PAIRS = 48
_CACHE: dict = {}


def _batch(codecs: dict, src: list[str], tgt: list[str]):
    def pad(rows):
        out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    s = [ids + [EOS] for ids in codecs["src"].encode(src)]
    t = codecs["tgt"].encode(tgt)
    return pad(s), pad([[BOS] + ids for ids in t]), pad([ids + [EOS] for ids in t])


def trained_tiny(real_lines, norm: str = "pre", steps: int = 400) -> SimpleNamespace:
    """(checkpoint path, model, cfg, codecs, src lines, tgt lines, greedy outputs) of the memorizing model."""
    key = (norm, steps)
    if key in _CACHE:
        return _CACHE[key]
    tmp = Path(tempfile.mkdtemp(prefix=f"tiny-{norm}-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    src, tgt = real_lines("train", "de")[:N_PAIRS], real_lines("train", "en")[:N_PAIRS]
    (tmp / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)), encoding="utf-8")
    cfg = config_from_dict(
        {
            "name": f"tiny-{norm}",
            "data": {
                "corpus": "files",
                "root": str(tmp / "data"),
                "train": str(tmp / "pairs.tsv"),
                "valid": str(tmp / "pairs.tsv"),
                "min_freq": 1,
            },
            "model": {
                "d_model": 64,
                "n_heads": 4,
                "enc_layers": 2,
                "dec_layers": 2,
                "d_ff": 128,
                "dropout": 0.0,
                "norm": norm,
            },
            "decode": {"beam_size": 4, "batch_size": 16},
        }
    )
    folder = prepare_corpus(cfg.data, log=lambda m: None)
    state = torch.load(folder / "codecs.pt", weights_only=True)
    codecs = {side: SideCodec.from_state(state[side]) for side in ("src", "tgt")}
    torch.manual_seed(0)
    model = build_model(cfg.model, len(codecs["src"].vocab), len(codecs["tgt"].vocab), PAD)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    s, t_in, t_out = _batch(codecs, src, tgt)
    model.train()
    for _ in range(steps):
        logits = model(s, t_in)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), t_out.flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp / "tiny.pt"
    save_checkpoint(path, model=model, cfg=cfg, codecs=codecs, epoch=1, step=steps)
    greedy = [codecs["tgt"].decode(h) for h in greedy_search(model, s, cfg.decode.max_len_a, cfg.decode.max_len_b)]
    _CACHE[key] = SimpleNamespace(
        path=path, model=model, cfg=cfg, codecs=codecs, src=src, tgt=tgt, greedy=greedy, tmp=tmp, loss=loss.item()
    )
    return _CACHE[key]
