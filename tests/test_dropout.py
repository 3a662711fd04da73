"""The CPU dropout: its keep rate, independence, unbiasedness and gradient, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_ids, small_model

from mt_cli.data.vocab import PAD
from mt_cli.model.dropout import Dropout, keep_mask, keep_rate
from mt_cli.steps import loss_sum


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keep_mask_keeps_each_element_with_probability_one_minus_p(p):
    n = 400_000
    mask = keep_mask(torch.Size([n]), p, torch.Generator().manual_seed(0))
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(mask.float().mean().item() - (1 - p)) < 5 * sd  # a binomial mean within 5 standard deviations
    assert abs(keep_rate(p) - (1 - p)) <= 0.5 / 2**16


def test_keep_mask_elements_are_independent():
    # neighbours share a 64-bit draw: their joint keep rate must still be the product of the marginals
    p, n = 0.5, 400_000
    mask = keep_mask(torch.Size([n]), p, torch.Generator().manual_seed(1)).float()
    for lag in (1, 2, 3, 4):
        both = (mask[:-lag] * mask[lag:]).mean().item()
        assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n), lag


def test_dropout_is_unbiased_and_zeroes_or_scales():
    torch.manual_seed(0)
    x = torch.full((200, 1000), 2.0)
    out = Dropout(0.2).train()(x)
    kept = out != 0
    assert torch.allclose(out[kept], torch.tensor(2.0 / keep_rate(0.2)))
    assert abs(out.mean().item() - 2.0) < 0.02


def test_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 300, requires_grad=True)
    out = Dropout(0.3).train()(x)
    out.sum().backward()
    expected = (out.detach() != 0).float() / keep_rate(0.3)
    assert torch.equal(x.grad, expected)


def test_dropout_is_the_identity_in_eval_mode_and_at_zero():
    x = torch.randn(8, 16)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_follows_the_global_seed():
    x = torch.randn(32, 64)
    torch.manual_seed(3)
    a = Dropout(0.1).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.1).train()(x)
    assert torch.equal(a, b)


def test_the_keep_rate_stays_in_whole_65536ths_and_above_zero():
    assert keep_rate(0.0) == 1.0 and keep_rate(0.5) == 0.5
    assert keep_rate(1.0) == keep_rate(0.99999999) == 1 / 2**16  # never 0: the scale 1/keep_rate stays finite


@pytest.mark.parametrize("p,kept", [(0.0, 2**22), (1.0, 2**22 / 2**16)])
def test_keep_mask_at_the_extremes(p, kept):
    """p = 0 keeps every element; p = 1 keeps about n/65536 of them (Poisson, mean 64: none is e^-64 unlikely)."""
    mask = keep_mask(torch.Size([2**22]), p, torch.Generator().manual_seed(4))
    count = int(mask.sum())
    assert count == kept if p == 0.0 else 0 < count < 3 * kept


def test_dropout_at_one_drops_almost_everything():
    out = Dropout(1.0).train()(torch.ones(2**20))
    assert (out == 0).float().mean().item() > 0.999


def test_keep_mask_follows_its_generator_not_the_global_seed():
    shape = torch.Size([64, 64])
    torch.manual_seed(0)
    a = keep_mask(shape, 0.5, torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    b = keep_mask(shape, 0.5, torch.Generator().manual_seed(7))
    c = keep_mask(shape, 0.5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_cpu_loss_scores_real_positions_only_and_equals_the_padded_loss():
    # reference: cross-entropy over the full (batch, len, vocab) logits with padding ignored
    torch.manual_seed(0)
    model = small_model().eval()
    src, tgt = random_ids(4, 7, 50), random_ids(4, 6, 60)
    tgt[0, 3:] = PAD
    tgt[2, 1:] = PAD
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    logits = model(src, tgt_in)
    reference = F.cross_entropy(
        logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, label_smoothing=0.1, reduction="sum"
    )
    total, n = loss_sum(model, src, tgt_in, tgt_out, 0.1)
    assert n.item() == (tgt_out != PAD).sum().item()
    assert torch.allclose(total, reference, rtol=1e-5)
    kept = model(src, tgt_in, keep=tgt_out != PAD)
    assert kept.shape == (n.item(), logits.size(-1))
