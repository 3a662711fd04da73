"""Multi-GPU / multi-node training through torchrun (DistributedDataParallel); no-ops in one process.

torchrun describes the job in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).
CUDA devices use NCCL and the CPU uses gloo (MT_DIST_BACKEND=gloo|nccl overrides). Only rank 0 writes
files; every collective below is called by all ranks at the same point of the program."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def setup(device_type: str | None = None) -> None:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        backend = os.environ.get("MT_DIST_BACKEND") or ("nccl" if device_type == "cuda" else "gloo")
        # rank 0 alone decodes the validation set and runs the final test while the others wait
        minutes = float(os.environ.get("MT_DIST_TIMEOUT_MIN", "120"))
        dist.init_process_group(backend, timeout=timedelta(minutes=minutes))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N`; asking for CUDA without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: not a device mt_cli uses; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu or auto")
    return dev


def device_for_rank(device: torch.device) -> torch.device:
    if device.type == "cuda" and active():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def wrap(model, device: torch.device):
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def _backend_device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t)
    return t


def all_reduce_max(values: list[float]) -> list[float]:
    """Element-wise maximum over ranks of a few host numbers (flags, counters)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_backend_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def broadcast_object(obj):
    """Rank 0's (picklable) object on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_float(x: float | None) -> float | None:
    """Rank 0's value on every rank."""
    return broadcast_object(x)


def all_gather_object(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn, *args, **kw):
    """Run `fn` on rank 0 only and return its result on every rank; an exception raised there is raised
    on every rank too (so a bad path or checkpoint stops all processes with the same message, no hang)."""
    if not active():
        return fn(*args, **kw)
    result = None
    if rank() == 0:
        try:
            result = ("ok", fn(*args, **kw))
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            result = ("error", e)
    kind, value = broadcast_object(result)
    if kind == "error":
        raise value
    return value


def barrier() -> None:
    if active():
        dist.barrier()


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def weights_sha256(state: dict) -> str:
    """A hash of a model's weights (state-dict order), to check that processes hold identical copies."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous()
        digest.update(str(flat.dtype).encode())
        digest.update(flat.reshape(-1).view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()[:16]
