"""Batching: seeded epoch order, dropped or padded ragged batch, device sharding, prefetch."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_dataset

from jaxtl.data.batching import epoch_indices, iterate_batches, pad_batch, shard_for_devices
from jaxtl.train import prefetch_to_device


def test_epoch_order_is_seeded_per_epoch():
    a = epoch_indices(10, seed=3, epoch=1)
    np.testing.assert_array_equal(a, np.random.default_rng([3, 1]).permutation(10))
    assert not np.array_equal(a, epoch_indices(10, seed=3, epoch=2))


def test_train_drops_ragged_batch_and_resumes_at_batch():
    data = tiny_dataset(21)
    full = list(iterate_batches(data, 8, seed=1, epoch=0))
    assert len(full) == 2 and all(len(b["images"]) == 8 for b in full)
    skipped = list(iterate_batches(data, 8, seed=1, epoch=0, start_batch=1))
    np.testing.assert_array_equal(skipped[0]["images"], full[1]["images"])


def test_eval_pads_ragged_batch_with_mask():
    data = tiny_dataset(21)
    batches = list(iterate_batches(data, 8, shuffle=False, drop_remainder=False))
    assert len(batches) == 3
    assert batches[-1]["mask"].tolist() == [1] * 5 + [0] * 3
    np.testing.assert_array_equal(batches[-1]["labels"][:5], data.labels[16:])
    with pytest.raises(ValueError, match="does not fit batch_size=4"):
        pad_batch({"images": np.zeros((5, 2))}, 4)


def test_shard_for_devices():
    out = shard_for_devices({"images": np.arange(24).reshape(8, 3)}, 4)
    assert out["images"].shape == (4, 2, 3)
    with pytest.raises(ValueError, match=r"global batch of 6 .* not divisible by the 4 devices"):
        shard_for_devices({"images": np.zeros((6, 3))}, 4)


def test_prefetch_keeps_order():
    items = [{"x": np.full(2, i)} for i in range(5)]
    got = [int(b["x"][0]) for b in prefetch_to_device(items, size=2)]
    assert got == list(range(5))


def test_run_length_from_epochs_or_steps():
    from jaxtl.data.batching import run_length

    assert run_length(37, 8, epochs=3, steps=None) == (4, 12)  # ragged last batch dropped
    assert run_length(37, 8, epochs=None, steps=5) == (4, 5)
    with pytest.raises(ValueError, match="exactly one of epochs= or steps="):
        run_length(37, 8, epochs=1, steps=1)
    with pytest.raises(ValueError, match="7 training examples are fewer than one batch of 8"):
        run_length(7, 8, epochs=1, steps=None)
    with pytest.raises(ValueError, match="at least one step"):
        run_length(37, 8, epochs=0, steps=None)
