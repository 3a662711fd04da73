"""Several trained models decoding as one: at each step the members' log-probabilities are averaged
(and renormalised), so greedy and beam search run on an ensemble exactly as on one model, KV caches included."""

from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.Module):
    """The decoding interface of `Transformer` (start_state / step / reorder_state / max_positions) over
    members that share their vocabularies; members may differ in size and shape."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two models")
        self.members = nn.ModuleList(members)

    @property
    def max_positions(self) -> int | None:
        """The shortest limit of any member (None: no member has learned positions)."""
        limits = [m.max_positions for m in self.members if m.max_positions is not None]
        return min(limits) if limits else None

    def start_state(self, src: torch.Tensor, expand: int = 1, max_steps: int = 64) -> dict:
        return {"members": [m.start_state(src, expand=expand, max_steps=max_steps) for m in self.members]}

    def step(self, tokens: torch.Tensor, state: dict) -> torch.Tensor:
        """log softmax of the members' mean log-probabilities (n, vocab): their renormalised geometric mean,
        the usual "average the log-probabilities" ensemble. A token one member rules out stays ruled out."""
        logps = [m.step(tokens, s) for m, s in zip(self.members, state["members"])]
        mean = torch.stack(logps).sum(0) / len(logps)
        return torch.log_softmax(mean, dim=-1)

    def reorder_state(self, state: dict, order: torch.Tensor) -> None:
        for member, member_state in zip(self.members, state["members"]):
            member.reorder_state(member_state, order)
