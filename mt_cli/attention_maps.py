"""Cross-attention heatmaps: source tokens × produced target tokens, one PNG per sentence.

Decoding stays on the fast path (fused attention, no weights). Afterwards one teacher-forced pass over
(source, produced hypothesis) with need_weights=True gives every decoder layer's cross-attention;
`attention_panels` picks the matrices that are drawn (so tests can check them), `draw_attention`
draws them labelled with the tokens as the model sees them (words or subword pieces)."""

from __future__ import annotations

from pathlib import Path

import torch

from mt_cli.data.vocab import BOS, EOS, PAD

DPI = 100
CELL = 0.3  # inches per token
MAX_LABEL = 18  # characters of a token label


def _parse_choice(text: str | int | None, default: str, option: str, noun: str) -> str | int:
    """`default`, 'all', or a 1-based number of a layer or head."""
    if text is None or text in (default, "all"):
        return text or default
    try:
        n = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {text}: use '{default}', 'all' or a {noun} number (1 = first)") from None
    if n < 1:
        raise ValueError(f"{option} {text}: {noun}s are numbered from 1")
    return n


def parse_layer(text: str | int | None) -> str | int:
    """'last' (default), 'all', or a 1-based layer number."""
    return _parse_choice(text, "last", "--attention-layer", "layer")


def parse_heads(text: str | int | None) -> str | int:
    """'mean' (default: averaged over heads), 'all' (one panel per head), or a 1-based head number."""
    return _parse_choice(text, "mean", "--attention-heads", "head")


def check_selection(model, layer: str | int, heads: str | int) -> None:
    """Fail before decoding when the layer/head asked for does not exist in `model`."""
    n_layers, n_heads = len(model.decoder), model.decoder[0].cross_attn.h
    if isinstance(layer, int) and layer > n_layers:
        raise ValueError(f"--attention-layer {layer}: the model has {n_layers} decoder layer(s)")
    if isinstance(heads, int) and heads > n_heads:
        raise ValueError(f"--attention-heads {heads}: the model has {n_heads} head(s)")


@torch.no_grad()
def cross_attention(
    model, pairs: list[tuple[list[int], list[int]]], device, batch_size: int = 64
) -> list[torch.Tensor]:
    """Teacher-forced cross-attention for (source ids, hypothesis ids) pairs, both without specials.
    Returns per pair a float tensor (layers, heads, len(hyp) + 1, len(src) + 1): row i is the query that
    produced hypothesis token i (the last row produced <eos>), column j is source token j (last: <eos>)."""
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            S = max(len(s) for s, _ in chunk) + 1
            T = max(len(h) for _, h in chunk) + 1
            src = torch.full((len(chunk), S), PAD, dtype=torch.long)
            tgt = torch.full((len(chunk), T), PAD, dtype=torch.long)
            for r, (s, h) in enumerate(chunk):
                src[r, : len(s) + 1] = torch.tensor(list(s) + [EOS])
                tgt[r, : len(h) + 1] = torch.tensor([BOS] + list(h))
            memory, mask = model.encode(src.to(device))
            _, weights = model.decode(tgt.to(device), memory, mask, need_weights=True)
            w = torch.stack([x.float() for x in weights], dim=1).cpu()  # (batch, layers, heads, T, S)
            for r, (s, h) in enumerate(chunk):
                out.append(w[r, :, :, : len(h) + 1, : len(s) + 1].clone())
    finally:
        model.train(was_training)
    return out


def attention_panels(weights: torch.Tensor, layer: str | int = "last", heads: str | int = "mean"):
    """The matrices that are drawn, as a grid: rows of (title, matrix (tgt, src) as a numpy array).
    `weights` is one sentence's (layers, heads, tgt, src) from `cross_attention`. Each matrix row sums to 1
    (a softmax, or the mean of softmaxes over heads)."""
    n_layers, n_heads = weights.shape[:2]
    if layer == "last":
        layers = [n_layers]
    elif layer == "all":
        layers = list(range(1, n_layers + 1))
    else:
        if layer > n_layers:
            raise ValueError(f"--attention-layer {layer}: the model has {n_layers} decoder layer(s)")
        layers = [layer]
    if isinstance(heads, int) and heads > n_heads:
        raise ValueError(f"--attention-heads {heads}: the model has {n_heads} head(s)")
    grid = []
    for li in layers:
        w = weights[li - 1]
        lname = f"layer {li}/{n_layers}"
        if heads == "mean":
            grid.append([(f"{lname}, mean of {n_heads} heads", w.mean(0).numpy())])
        elif heads == "all":
            grid.append([(f"{lname}, head {h + 1}", w[h].numpy()) for h in range(n_heads)])
        else:
            grid.append([(f"{lname}, head {heads}/{n_heads}", w[heads - 1].numpy())])
    return grid


def figure_size(n_src: int, n_tgt: int, n_rows: int = 1, n_cols: int = 1) -> tuple[float, float]:
    """Figure size in inches for a grid of (n_tgt × n_src) panels; pixels = inches × DPI."""
    w = n_cols * (CELL * n_src + 1.0) + 2.2
    h = n_rows * (CELL * n_tgt + 0.6) + 2.2
    return round(max(w, 4.0), 2), round(max(h, 3.0), 2)


def _label(tok: str) -> str:
    tok = tok if len(tok) <= MAX_LABEL else tok[: MAX_LABEL - 1] + "…"
    return tok.replace("$", r"\$")  # no mathtext


def draw_attention(grid, src_tokens: list[str], tgt_tokens: list[str], title: str = ""):
    """A matplotlib Figure of the panels (source tokens on x, produced target tokens on y)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(grid), len(grid[0])
    fig = Figure(figsize=figure_size(len(src_tokens), len(tgt_tokens), n_rows, n_cols), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    vmax = max(float(m.max()) for row in grid for _, m in row) or 1.0
    im = None
    for r, row in enumerate(grid):
        for c, (name, m) in enumerate(row):
            ax = axes[r][c]
            im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
            ax.set_title(name, fontsize=8)
            ax.set_xticks(range(len(src_tokens)))
            ax.set_yticks(range(len(tgt_tokens)))
            ax.set_xticklabels([_label(t) for t in src_tokens], rotation=90, fontsize=8)
            ax.set_yticklabels([_label(t) for t in tgt_tokens], fontsize=8)
            ax.tick_params(length=0)
    for ax in axes[-1]:
        ax.set_xlabel("source")
    for row in axes:
        row[0].set_ylabel("produced target")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title.replace("$", r"\$"), fontsize=9)  # no mathtext
    return fig


def token_labels(codecs: dict, src_ids: list[int], hyp_ids: list[int]) -> tuple[list[str], list[str]]:
    """Axis labels: the tokens as the model sees them (words or subword pieces, <unk> included) + <eos>."""
    return codecs["src"].pieces(src_ids) + ["<eos>"], codecs["tgt"].pieces(hyp_ids) + ["<eos>"]


def write_attention_maps(
    model,
    codecs: dict,
    items: list[tuple[str, list[int], list[int]]],
    out_dir: str | Path,
    device,
    layer: str | int = "last",
    heads: str | int = "mean",
) -> list[Path]:
    """One PNG per (name, source ids, hypothesis ids) item: out_dir/<name>.png, written atomically."""
    from mt_cli.plots import save_figure

    out_dir = Path(out_dir)
    weights = cross_attention(model, [(s, h) for _, s, h in items], device)
    paths = []
    for (name, s, h), w in zip(items, weights):
        grid = attention_panels(w, layer, heads)
        src_tok, tgt_tok = token_labels(codecs, s, h)
        fig = draw_attention(grid, src_tok, tgt_tok, title=f"{name}: {codecs['tgt'].decode(h)[:120]}")
        paths.append(save_figure(fig, out_dir / f"{name}.png"))
    return paths


def split_items(model, codecs: dict, cfg, split: str, device, beam_size: int, limit: int, amp_dtype=None):
    """(name, source ids, hypothesis ids) for the first `limit` sentences of a prepared split, decoded
    like `mt evaluate` decodes them."""
    from mt_cli.decode import translate_ids
    from mt_cli.evaluate import load_eval_split

    data, _ = load_eval_split(cfg, split)
    rows = torch.arange(min(limit, len(data)))
    if not len(rows):
        return []
    src = data.source_rows(rows)
    hyps = translate_ids(model, src, cfg.decode, device, beam_size=beam_size, amp_dtype=amp_dtype)
    width = len(str(len(data)))
    items = []
    for i, (row, h) in enumerate(zip(src.tolist(), hyps)):
        ids = row[: row.index(EOS)] if EOS in row else [t for t in row if t != PAD]
        items.append((f"{i + 1:0{max(width, 4)}d}", ids, h[0][0]))
    return items
