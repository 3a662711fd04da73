"""mt_cli.steps in isolation: the precision a device gets, and the loss on a non-CPU device (its full-grid path),
run on PyTorch's meta device so that no GPU is needed, against the CPU path's closed form."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import random_ids, small_model

from mt_cli.config.schema import TrainConfig
from mt_cli.data.vocab import PAD
from mt_cli.steps import build_optimizer, loss_sum, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_the_cpu_falls_back_to_fp32_with_a_warning(precision):
    with pytest.warns(UserWarning, match=f"precision {precision} requested on cpu; using fp32"):
        assert resolve_precision(precision, CPU) == torch.float32


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_auto_and_fp32_on_the_cpu_are_fp32_without_a_warning(precision):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision(precision, CPU) == torch.float32


def test_on_a_cuda_device_each_precision_is_its_dtype_and_auto_prefers_bf16(monkeypatch):
    """The choice needs no GPU: a device object, and the bf16 capability as the GPU would report it."""
    cuda = torch.device("cuda")
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert {p: resolve_precision(p, cuda) for p in expected} == expected
    for supported, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, answer=supported: answer)
        assert resolve_precision("auto", cuda) == dtype


def test_the_loss_is_the_sum_over_real_target_tokens_on_every_path():
    model = small_model(src_vocab=20, tgt_vocab=30)
    src, tgt_in, tgt_out = random_ids(3, 5, 20), random_ids(3, 6, 30), random_ids(3, 6, 30)
    tgt_out[0, 4:] = PAD
    tgt_out[2, 1:] = PAD
    logits = model(src, tgt_in).float()
    real = tgt_out != PAD
    want = F.cross_entropy(logits[real], tgt_out[real], reduction="sum").detach()
    total, n = (t.detach() for t in loss_sum(model, src, tgt_in, tgt_out, 0.0))
    assert int(n) == int(real.sum()) and float(total) == pytest.approx(float(want), rel=1e-5)
    # a device other than the CPU scores the whole grid, padding ignored: the same sum (meta: shapes only)
    meta = model.to("meta")
    total, n = loss_sum(meta, src.to("meta"), tgt_in.to("meta"), tgt_out.to("meta"), 0.1)
    assert total.device.type == n.device.type == "meta" and total.shape == n.shape == ()


def test_ddp_all_reduces_only_in_the_last_backward_of_an_accumulated_update(tmp_path):
    """One gloo process in this process: a communication hook counts the gradient buckets DDP all-reduces."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from mt_cli.data.batching import Batch
    from mt_cli.steps import Stepper

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = DistributedDataParallel(small_model(src_vocab=20, tgt_vocab=30).train())
        reduced = []
        model.register_comm_hook(None, lambda state, bucket: reduced.append(1) or allreduce_hook(state, bucket))
        params = [p for p in model.parameters() if p.requires_grad]
        stepper = Stepper(model, torch.optim.Adam(params), params, device=CPU, amp_dtype=torch.float32, clip=1.0,
                          label_smoothing=0.0, use_graphs=False, log=lambda *_: None)  # fmt: skip
        batch = Batch(random_ids(2, 5, 20), random_ids(2, 6, 30), random_ids(2, 6, 30), 10, 12)
        stepper([batch])
        per_backward = len(reduced)
        stepper([batch, batch, batch])
        assert per_backward >= 1 and len(reduced) == 2 * per_backward  # the third backward only
    finally:
        dist.destroy_process_group()


def test_adam_takes_lr_betas_eps_and_weight_decay_from_the_config():
    """Two steps with fixed gradients against Adam written out here, with L2 weight decay added to the
    gradient (torch.optim.Adam's weight_decay); betas and eps far from the defaults so that each one counts."""
    tcfg = TrainConfig(lr=0.01, betas=(0.5, 0.7), eps=0.1, weight_decay=0.2)
    weights = torch.nn.Parameter(torch.tensor([2.0, -3.0, 0.5]))
    optimizer = build_optimizer([weights], tcfg, CPU)
    expected, m, v = weights.detach().clone(), torch.zeros(3), torch.zeros(3)
    for t, grad in enumerate((torch.tensor([0.0, 1.0, -0.4]), torch.tensor([0.3, 0.0, 0.2])), start=1):
        g = grad + 0.2 * expected
        m, v = 0.5 * m + 0.5 * g, 0.7 * v + 0.3 * g * g
        expected = expected - 0.01 * (m / (1 - 0.5**t)) / ((v / (1 - 0.7**t)).sqrt() + 0.1)
        weights.grad = grad.clone()
        optimizer.step()
        assert torch.allclose(weights.detach(), expected, rtol=0, atol=1e-6), t
