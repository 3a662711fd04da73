"""One optimizer step, run eagerly or replayed from a CUDA graph captured per batch shape.

The step never synchronizes with the host: loss and token counts accumulate in device tensors,
and a non-finite loss or gradient skips the update on the device (fused Adam's `found_inf`)."""

from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mt_cli.data.batching import Batch
from mt_cli.data.vocab import PAD
from mt_cli.decode import autocast_for

# slots of Stepper.acc, the device tensor the steps accumulate into without a host sync
LOSS, TOKENS, SKIPPED, BAD_RUN, STEPS = range(5)


class StepTotals(NamedTuple):
    """Stepper.acc read on the host: summed loss and target tokens of the finite steps, skipped updates,
    non-finite steps in a row, and steps run."""

    loss: float
    tokens: float
    skipped: float
    bad_run: float
    steps: float

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.tokens, 1)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            warnings.warn(f"precision {precision} requested on {device}; using fp32", stacklevel=2)
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def loss_sum(model, src, tgt_in, tgt_out, label_smoothing: float):
    """Summed token cross-entropy over non-pad targets, and their count (both device tensors)."""
    if tgt_out.device.type == "cpu":  # score real positions only (on a GPU, selecting them would sync the host)
        keep = tgt_out != PAD
        logits, target = model(src, tgt_in, keep=keep), tgt_out[keep]
    else:
        logits, target = model(src, tgt_in).flatten(0, 1), tgt_out.flatten()
    loss = F.cross_entropy(
        logits.float(),
        target,
        ignore_index=PAD,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return loss, (tgt_out != PAD).sum()


def build_optimizer(params, tcfg, device: torch.device) -> torch.optim.Adam:
    """Adam, fused (one kernel over all parameters: 16% of a 2-core CPU step of the 9M model); on a GPU also
    capturable, with a tensor lr that CUDA graphs can read."""
    cuda = device.type == "cuda"
    return torch.optim.Adam(
        params,
        lr=torch.tensor(tcfg.lr, device=device) if cuda else tcfg.lr,
        betas=tcfg.betas,
        eps=tcfg.eps,
        weight_decay=tcfg.weight_decay,
        fused=True,
        capturable=cuda,
    )


class Stepper:
    """Runs training steps: forward, backward, clip, finite check, Adam, accumulate."""

    def __init__(
        self,
        model,
        optimizer,
        params,
        *,
        device,
        amp_dtype,
        clip: float,
        label_smoothing: float,
        use_graphs: bool,
        scaler=None,
        log=print,
    ):
        self.model, self.opt, self.params = model, optimizer, params
        self.device, self.amp_dtype, self.clip, self.label_smoothing = device, amp_dtype, clip, label_smoothing
        self.scaler = scaler
        self.log = log
        self.acc = torch.zeros(5, device=device)
        self.device_skip = device.type == "cuda" and scaler is None and bool(optimizer.defaults.get("fused"))
        if self.device_skip:
            self.found_inf = torch.zeros((), device=device)
            optimizer.found_inf = self.found_inf  # read by fused Adam: skips the update on device
        self.use_graphs = use_graphs and self.device_skip
        self.graphs: dict = {}
        self.pool = None
        self.warm = False

    # -- the step body, shared by eager and captured execution ---------------------------------
    def _forward_backward(self, src, tgt_in, tgt_out, cache_autocast: bool, tokens: int | None = None):
        """Summed loss of one batch, divided by the target tokens of the whole update, then backward.
        `tokens` is a host number when gradients accumulate over batches; None: this batch's (a device tensor)."""
        with autocast_for(self.device, self.amp_dtype, cache_autocast):
            total, ntok = loss_sum(self.model, src, tgt_in, tgt_out, self.label_smoothing)
        loss = total / (ntok.clamp(min=1) if tokens is None else max(tokens, 1))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return total, ntok

    def _clip_and_check(self, total):
        """Unscale (fp16), clip, and whether the update is finite (a device tensor)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if self.clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in self.params]))
        finite = torch.isfinite(total) & torch.isfinite(norm)
        if self.scaler is not None:
            # fp16: the scaler skips a step whose scaled gradients overflow and halves its scale; that back-off
            # is routine (several in a row at the start), not divergence, unless it happens even at scale <= 1
            scale = getattr(self.scaler, "_scale", None)
            scale = torch.tensor(self.scaler.get_scale()) if scale is None else scale
            finite = torch.isfinite(total) & (torch.isfinite(norm) | (scale > 1))
        return finite

    def _body(self, src, tgt_in, tgt_out, cache_autocast: bool):
        total, ntok = self._forward_backward(src, tgt_in, tgt_out, cache_autocast)
        return total, ntok, self._clip_and_check(total)

    def _sum_gradients(self, batches: list[Batch]):
        """Forward and backward over the batches of one update; DDP all-reduces only after the last."""
        tokens = sum(b.n_tgt for b in batches) if len(batches) > 1 else None
        no_sync = getattr(self.model, "no_sync", None)
        total = ntok = None
        for i, b in enumerate(batches):
            quiet = no_sync() if no_sync is not None and i < len(batches) - 1 else contextlib.nullcontext()
            with quiet:
                batch_total, batch_ntok = self._forward_backward(b.src, b.tgt_in, b.tgt_out, True, tokens)
            total = batch_total if total is None else total + batch_total
            ntok = batch_ntok if ntok is None else ntok + batch_ntok
        return total, ntok

    def _accumulate(self, total, ntok, finite):
        acc = self.acc
        acc[LOSS] += torch.where(finite, total.detach(), 0.0)
        acc[TOKENS] += torch.where(finite, ntok.float(), 0.0)
        acc[SKIPPED] += (~finite).float()
        acc[BAD_RUN] = torch.where(finite, 0.0, acc[BAD_RUN] + 1)
        acc[STEPS] += 1

    def _eager(self, batches: list[Batch]):
        total, ntok = self._sum_gradients(batches)
        finite = self._clip_and_check(total)
        if self.device_skip:
            self.found_inf.copy_((~finite).float())
            self.opt.step()
        elif self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        elif bool(finite):  # CPU: a host check costs nothing
            self.opt.step()
        self._accumulate(total, ntok, finite)
        self.opt.zero_grad(set_to_none=False)

    def _graphed(self, b: Batch):
        key = tuple(b.src.shape)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(b)
            if entry is None:
                return self._eager([b])
            self.graphs[key] = entry
        g, (src, tgt_in, tgt_out) = entry
        src.copy_(b.src, non_blocking=True)
        tgt_in.copy_(b.tgt_in, non_blocking=True)
        tgt_out.copy_(b.tgt_out, non_blocking=True)
        g.replay()

    def _capture(self, b: Batch):
        static = (b.src.clone(), b.tgt_in.clone(), b.tgt_out.clone())
        grads = [p.grad for p in self.params]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm up this shape (autograd, kernels), then undo its grads
                self._body(*static, cache_autocast=False)
                torch._foreach_zero_(grads)
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                torch._foreach_zero_(grads)
                total, ntok, finite = self._body(*static, cache_autocast=False)
                self.found_inf.copy_((~finite).float())
                self.opt.step()
                self._accumulate(total, ntok, finite)
        except Exception as e:  # noqa: BLE001 - never lose a run to a capture problem: fall back to eager steps
            self.log(
                f"warning: CUDA graph capture failed for batch shape {tuple(b.src.shape)} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); using eager steps"
            )
            self.use_graphs = False
            torch.cuda.synchronize()
            self.opt.zero_grad(set_to_none=False)
            return None
        return g, static

    def __call__(self, batch: Batch | list[Batch]) -> None:
        """One update from a batch, or from the summed gradients of several (train.accumulate)."""
        batches = batch if isinstance(batch, list) else [batch]
        if self.use_graphs and self.warm and len(batches) == 1:
            self._graphed(batches[0])
        else:
            self._eager(batches)  # the first step creates optimizer state and gradients eagerly
            self.warm = True
        self.ooms = 0

    def oom(self, b: Batch, limit: int) -> None:
        """A CUDA out-of-memory error on one batch: free memory, skip it, stop after `limit` in a row."""
        self.opt.zero_grad(set_to_none=False)
        torch.cuda.empty_cache()
        self.ooms = getattr(self, "ooms", 0) + 1
        self.log(
            f"warning: CUDA out of memory on a batch of shape {tuple(b.src.shape)}/{tuple(b.tgt_in.shape)}; "
            f"skipped ({self.ooms} in a row)"
        )
        if self.ooms >= limit:
            raise RuntimeError(
                f"CUDA out of memory {self.ooms} times in a row; lower train.max_tokens (or train.batch_sentences)"
            )

    def totals(self) -> StepTotals:
        """The accumulators, read without resetting them (a host sync)."""
        return StepTotals(*self.acc.tolist())

    def take(self) -> StepTotals:
        """Read and reset the accumulators (the only host sync of an epoch); BAD_RUN, a streak, carries over."""
        taken = self.totals()
        self.acc[LOSS] = 0
        self.acc[TOKENS] = 0
        self.acc[SKIPPED] = 0
        self.acc[STEPS] = 0
        return taken
