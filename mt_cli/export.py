"""`mt export --format ctranslate2`: a checkpoint as a CTranslate2 model folder (weights through CTranslate2's
specs API, plus the tokenizers and config that translation needs). CTranslate2 is an optional extra."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mt_cli.data.vocab import SPECIALS
from mt_cli.model.layers import sinusoidal_table

QUANTIZATIONS = ("float32", "int8", "int8_float16", "float16")
CODECS_FILE, CONFIG_FILE = "mt_codecs.pt", "mt_config.json"


class ExportError(ValueError):
    """A model option CTranslate2 cannot represent, or an output that cannot be written."""


def _check_supported(cfg) -> None:
    """Refuse, naming the option, what a CTranslate2 Transformer cannot compute."""
    if cfg.model.attention == "additive":
        raise ExportError(
            "model.attention: additive: CTranslate2 has only dot-product attention; "
            "export a scaled_dot, dot or bilinear model"
        )


def _array(t: torch.Tensor):
    """A float32 numpy copy: spec.optimize() quantizes in place, and a float32 tensor's .numpy() shares its
    memory (an int8 export used to rewrite the weights of the model it exported)."""
    return t.detach().float().numpy().copy()


def _linear(spec, layer: torch.nn.Linear, weight=None, bias=None) -> None:
    spec.weight = _array(layer.weight if weight is None else weight)
    spec.bias = _array(layer.bias if bias is None else bias)


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _attention_weights(attn):
    """(q, k, v) (weight, bias) pairs with CTranslate2's fixed 1/√d_head scaling made to give our scores:
    unscaled dot products get q × √d_head; bilinear scores qᵀWk get W folded into the key projection."""
    q_w, q_b = attn.q_proj.weight.detach().clone(), attn.q_proj.bias.detach().clone()
    k_w, k_b = attn.k_proj.weight.detach().clone(), attn.k_proj.bias.detach().clone()
    if attn.scoring in ("dot", "bilinear"):
        q_w, q_b = q_w * attn.d_head**0.5, q_b * attn.d_head**0.5
    if attn.scoring == "bilinear":
        w = torch.block_diag(*[attn.bilinear.weight.detach()] * attn.h)
        k_w, k_b = w @ k_w, w @ k_b
    return (q_w, q_b), (k_w, k_b), (attn.v_proj.weight.detach(), attn.v_proj.bias.detach())


def _self_attention(spec, attn) -> None:
    (q_w, q_b), (k_w, k_b), (v_w, v_b) = _attention_weights(attn)
    spec.linear[0].weight = _array(torch.cat([q_w, k_w, v_w]))  # fused QKV
    spec.linear[0].bias = _array(torch.cat([q_b, k_b, v_b]))
    _linear(spec.linear[1], attn.out_proj)


def _cross_attention(spec, attn) -> None:
    (q_w, q_b), (k_w, k_b), (v_w, v_b) = _attention_weights(attn)
    spec.linear[0].weight, spec.linear[0].bias = _array(q_w), _array(q_b)
    spec.linear[1].weight = _array(torch.cat([k_w, v_w]))  # fused KV
    spec.linear[1].bias = _array(torch.cat([k_b, v_b]))
    _linear(spec.linear[2], attn.out_proj)


def _embeddings(spec, emb, positions: int) -> None:
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings  # encoder: a list
    embeddings.weight = _array(emb.tok.weight)
    table = emb.pos.weight if emb.learned else emb.pe  # the model's own table, not CTranslate2's sinusoids
    if not emb.learned and table.size(0) < positions:
        table = sinusoidal_table(positions, table.size(1))
    spec.position_encodings.encodings = _array(table[:positions])
    spec.scale_embeddings = True  # token × √d_model, as Embeddings does


def build_spec(model, cfg, codecs: dict):
    """The CTranslate2 TransformerSpec holding `model`'s weights and vocabularies."""
    import ctranslate2  # optional extra: only `mt export` and the CTranslate2 engine need it

    _check_supported(cfg)
    m, pre = cfg.model, cfg.model.norm == "pre"
    spec = ctranslate2.specs.TransformerSpec.from_config(
        (m.enc_layers, m.dec_layers), m.n_heads, pre_norm=pre, no_final_norm=not pre
    )
    positions = m.max_positions
    _embeddings(spec.encoder, model.src_embed, positions)
    _embeddings(spec.decoder, model.tgt_embed, positions)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder):
        _self_attention(layer_spec.self_attention, layer.self_attn)
        _norm(layer_spec.self_attention.layer_norm, layer.r1.norm)
        _linear(layer_spec.ffn.linear_0, layer.ffn[0])
        _linear(layer_spec.ffn.linear_1, layer.ffn[3])
        _norm(layer_spec.ffn.layer_norm, layer.r2.norm)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder):
        _self_attention(layer_spec.self_attention, layer.self_attn)
        _norm(layer_spec.self_attention.layer_norm, layer.r1.norm)
        _cross_attention(layer_spec.attention, layer.cross_attn)
        _norm(layer_spec.attention.layer_norm, layer.r2.norm)
        _linear(layer_spec.ffn.linear_0, layer.ffn[0])
        _linear(layer_spec.ffn.linear_1, layer.ffn[3])
        _norm(layer_spec.ffn.layer_norm, layer.r3.norm)
    if pre:
        _norm(spec.encoder.layer_norm, model.enc_norm)
        _norm(spec.decoder.layer_norm, model.dec_norm)
    _linear(spec.decoder.projection, model.generator)
    spec.config.layer_norm_epsilon = model.encoder[0].r1.norm.eps  # torch's 1e-5, not CTranslate2's 1e-6
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = SPECIALS[0], SPECIALS[2], SPECIALS[3]
    spec.config.decoder_start_token = SPECIALS[2]
    spec.register_source_vocabulary(list(codecs["src"].vocab.itos))
    spec.register_target_vocabulary(list(codecs["tgt"].vocab.itos))
    return spec


def export_ctranslate2(model, cfg, codecs: dict, out_dir: str | Path, quantization: str = "float32") -> Path:
    """Write the CTranslate2 model, our codecs and config into `out_dir` (created; must not exist)."""
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"--quantization {quantization}: use one of {', '.join(QUANTIZATIONS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"-o {out}: exists and is not empty; choose a new folder")
    spec = build_spec(model.float().cpu().eval(), cfg, codecs)
    spec.validate()
    spec.optimize(quantization=quantization)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:  # written beside the target and renamed at the end: the folder is complete or absent
        spec.save(str(tmp))
        torch.save({side: c.state() for side, c in codecs.items()}, tmp / CODECS_FILE)
        (tmp / CONFIG_FILE).write_text(
            json.dumps({"config": cfg.to_dict(), "quantization": quantization}, indent=1), encoding="utf-8"
        )
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
