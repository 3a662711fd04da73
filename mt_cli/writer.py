"""One background thread that writes a run's files (checkpoints, metrics, curves.png) in submission order.

Why: writing last.pt (weights + Adam state, ~300 MB for the default model, fsynced), best.pt and the epoch
snapshot held the training loop for ~1 s per epoch (benchmarks/checkpoint_overhead.py); the loop now only
copies the state into memory (`snapshot`). Each write stays atomic (temp file + fsync + rename)."""

from __future__ import annotations

import queue
import threading

import torch


def snapshot(obj, _memo: dict | None = None):
    """`obj` (nested dicts, lists, tuples) with every tensor copied to CPU memory, so later steps cannot change
    it (on the CPU `.cpu()` is no copy); tensors that share memory (tied embeddings) stay shared."""
    memo = {} if _memo is None else _memo
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())  # all alive now: equal keys alias
        if key not in memo:
            memo[key] = t.to("cpu", copy=True)
        return memo[key]
    if isinstance(obj, dict):
        return {k: snapshot(v, memo) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(snapshot(v, memo) for v in obj)
    return obj  # plain values (numbers, strings, None) are immutable


class Writer:
    """Runs submitted jobs in order on one daemon thread; `submit` blocks while `max_pending` submissions wait.
    The first failed job skips all later ones; its error is raised by every later submit, flush and close."""

    def __init__(self, max_pending: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, *jobs) -> None:
        """Queue callables that run in this order, after everything submitted before."""
        self._raise()
        jobs = tuple(j for j in jobs if j is not None)  # None: nothing to write (ranks other than 0)
        if not jobs:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mt-writer", daemon=True)
            self._thread.start()
        self._queue.put(jobs)

    def _run(self) -> None:
        while True:
            jobs = self._queue.get()
            try:
                if jobs is None:
                    return
                for job in jobs:
                    if self._error is None:
                        job()
            except BaseException as e:  # noqa: BLE001 - raised on the training thread
                self._error = e
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Wait until everything submitted is on disk; raise the first error of the writes."""
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Flush and stop the thread."""
        if self._thread is not None:
            self._queue.join()
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        elif not issubclass(exc_type, KeyboardInterrupt):  # a second Ctrl-C quits at once
            try:  # keep the saves made before the error; the error itself is what the user must see
                self.close()
            except Exception:  # noqa: BLE001
                pass
