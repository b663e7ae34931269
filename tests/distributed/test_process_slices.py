"""Per-process batch slices: P processes' slices, concatenated in process order, are the single-process batches."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtl.data import ArrayDataset
from jaxtl.data.batching import iterate_batches, process_slice


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("processes", [1, 2, 4])
def test_process_slices_rebuild_the_global_batches(processes, drop_remainder):
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.normal(size=(13, 2, 2, 1)).astype(np.float32), rng.integers(0, 3, 13), 3)
    kw = {"seed": 3, "epoch": 1, "drop_remainder": drop_remainder}
    whole = list(iterate_batches(ds, 8, **kw))
    parts = [list(iterate_batches(ds, 8, process_index=p, process_count=processes, **kw)) for p in range(processes)]
    assert all(len(p) == len(whole) for p in parts)
    for b, batch in enumerate(whole):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([p[b][key] for p in parts]), batch[key])
    if not drop_remainder:  # the ragged batch: 5 real rows, the last process's slice holds only padding
        assert whole[-1]["mask"].sum() == 5


def test_process_slice_errors():
    assert process_slice(8, 1, 2) == slice(4, 8)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        process_slice(8, 0, 3)
    with pytest.raises(ValueError, match=r"process_index must lie in \[0, 2\)"):
        process_slice(8, 2, 2)
