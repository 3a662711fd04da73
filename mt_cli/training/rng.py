"""Seeding every random generator a step may draw from, and saving/restoring their states."""

from __future__ import annotations

import random
import sys

import torch


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    random.seed(seed)
    np = sys.modules.get("numpy")  # only if something imported it: numpy is no dependency of training
    if np is not None:
        np.random.seed(seed % 2**32)


def rng_state(device: torch.device) -> dict:
    """Every random generator's state, as tensors and plain data (weights_only-loadable)."""
    python_state = random.getstate()
    states = {"python": list(python_state[1]), "python_pos": python_state[2], "torch": torch.get_rng_state()}
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        states["numpy"] = [str(name), [int(x) for x in keys], int(pos), int(has_gauss), float(gauss)]
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_state(states: dict, device: torch.device) -> None:
    random.setstate((3, tuple(states["python"]), states["python_pos"]))
    torch.set_rng_state(states["torch"])
    if states.get("numpy") is not None:
        import numpy as np  # saved by a run that had numpy loaded: restore it, importing it if need be

        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if device.type == "cuda" and states.get("cuda") is not None:
        torch.cuda.set_rng_state(states["cuda"], device)
