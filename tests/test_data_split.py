"""mt_cli.data.split.Split: the name it accepts, the memory it says its matrices take, and filler rows that are
the same on the resident and the streamed path, and a split of no pairs."""

from __future__ import annotations

import numpy as np
import torch

from mt_cli.data.batching import Split
from mt_cli.data.vocab import EOS, PAD


def test_the_old_formats_name_with_pt_is_the_same_split(prepared):
    a, b = Split(prepared.folder / "valid"), Split(prepared.folder / "valid.pt")
    assert b.name == "valid" and len(a) == len(b) and torch.equal(a.src, b.src) and torch.equal(a.tgt, b.tgt)


def test_the_memory_figure_is_the_resident_matrices_size(prepared):
    split = Split(prepared.folder / "valid", 8, resident=True)
    assert split.matrix_mb * 2**20 == split.src.numel() * 8 + split.tgt.numel() * 8
    assert split.src.dtype == split.tgt.dtype == torch.int64


def test_filler_rows_attend_to_one_eos_on_both_paths(prepared):
    resident, streamed = (Split(prepared.folder / "valid", 8, resident=r) for r in (True, False))
    n, width = len(resident), resident.width
    idx = torch.tensor([0, n, 5, n])
    rows = streamed.rows(idx, width)
    assert np.array_equal(rows[0], resident.src[idx].numpy()) and np.array_equal(rows[1], resident.tgt[idx].numpy())
    filler = resident.src[n].tolist()
    assert filler == [EOS] + [PAD] * (width - 1)  # a row of only padding would attend to nothing
    assert resident.tgt[n].tolist() == [PAD] * (width + 1)


def _empty_split(folder):
    from mt_cli.data.arrays import ArrayWriter, OffsetsWriter, array_path

    for side in ("src", "tgt"):
        for writer in (
            ArrayWriter(array_path(folder, "none", side), np.int16),
            OffsetsWriter(array_path(folder, "none", side, offsets=True)),
        ):
            writer.close()
    return folder / "none"


def test_a_split_of_no_pairs_plans_no_batches(tmp_path):
    from mt_cli.data.batching import batch_plan

    split = Split(_empty_split(tmp_path))
    for shuffle in (False, True):
        plan = batch_plan(split, 16, None, shuffle=shuffle)
        assert len(plan) == 0 and plan.indices().tolist() == [] and plan.indices().dtype == torch.int64
