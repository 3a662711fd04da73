"""Multi-GPU / multi-node training through torchrun (DistributedDataParallel); no-ops in one process."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> None:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MT_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


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


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t)
    return t


def broadcast_float(x: float | None) -> float | None:
    """Rank 0's value on every rank."""
    if not active():
        return x
    obj = [x]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


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
