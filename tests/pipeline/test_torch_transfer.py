"""Transfer from PyTorch end to end with real trained weights: torch trains, the bridge converts, jaxtl fine-tunes.

torchvision's resnet18 (weights=None) is trained in torch on digits 0-4 (32x32 RGB, ImageNet-normalised on both
sides), converted, checked to predict exactly as torch does on held-out 0-4, then given a new 5-class head trained
on digits 5-9 with the backbone frozen.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxtl.bridge import from_torchvision  # noqa: E402
from jaxtl.data import ArrayDataset, load_digits, train_test_split  # noqa: E402
from jaxtl.data.in_memory import normalize  # noqa: E402
from jaxtl.models import ModelCard  # noqa: E402
from jaxtl.recipes import FinetuneConfig, Split, build_classifier, evaluate_classifier, finetune  # noqa: E402
from jaxtl.train import Loop, Optimizer  # noqa: E402

# Chance is 20% on five classes; a frozen backbone trained on the other five digits gives far more (measured ~80-90%).
MIN_TRANSFER_TOP1 = 0.6


def _classes(ds: ArrayDataset, lo: int) -> ArrayDataset:
    assert ds.labels is not None
    idx = np.flatnonzero((ds.labels >= lo) & (ds.labels < lo + 5))
    sub = ds.subset(idx)
    assert sub.labels is not None
    return ArrayDataset(sub.images, sub.labels - lo, 5, tuple(str(lo + i) for i in range(5)))


@pytest.fixture(scope="module")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    # ImageNet normalisation, identical for torch and Flax: both sides get these very arrays.
    pre = ModelCard.for_arch("resnet18", 0).preprocessing
    raw = load_digits(size=32, channels=3)
    ds = ArrayDataset(normalize(raw.images, pre.mean, pre.std), raw.labels, raw.num_classes, raw.class_names)
    return train_test_split(ds, 0.25, seed=0)


@pytest.fixture(scope="module")
def torch_model(digits):
    train = _classes(digits[0], 0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    x = torch.from_numpy(np.ascontiguousarray(train.images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(train.labels.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            if len(idx) < 2:
                continue
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        train_acc = (model(x).argmax(1) == y).float().mean().item()
    assert train_acc > 0.6, f"torch training did not get clearly above chance (train acc {train_acc:.3f})"
    return model


def test_converted_model_predicts_as_torch(digits, torch_model) -> None:
    test = _classes(digits[1], 0)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(np.ascontiguousarray(test.images.transpose(0, 3, 1, 2)))).numpy()
    module, variables = from_torchvision(torch_model)
    got = np.asarray(module.apply(variables, test.images, train=False))
    assert got.shape == want.shape == (len(test), 5)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert (want.argmax(1) == test.labels).mean() > 0.6  # the held-out 0-4 are really recognised


def test_frozen_backbone_transfers_to_new_classes(digits, torch_model) -> None:
    train, test = _classes(digits[0], 5), _classes(digits[1], 5)
    module, variables = from_torchvision(torch_model)
    clf, start = build_classifier((module, variables), 5, jax.random.PRNGKey(0), (32, 32, 3))
    before = evaluate_classifier(clf, start, test)
    config = FinetuneConfig(
        mode="frozen", optimizer=Optimizer(lr=1e-2), loop=Loop(steps=60, batch_size=32), split=Split(test_fraction=0)
    )
    tuned = finetune(config, (clf, start), train, progress=False).variables
    for col in ("params", "batch_stats"):
        keys = [k for k in variables[col] if k != "fc"]
        assert keys and set(keys) == {k for k in tuned[col] if k != "fc"}
        for k in keys:
            assert jax.tree.all(jax.tree.map(np.array_equal, tuned[col][k], variables[col][k])), f"{col}/{k} moved"
    assert not np.array_equal(tuned["params"]["fc"]["kernel"], start["params"]["fc"]["kernel"])
    after = evaluate_classifier(clf, tuned, test)
    print(f"held-out digits 5-9: top-1 {before['top1']:.3f} with a fresh head -> {after['top1']:.3f} after fine-tuning")
    assert after["n"] == len(test)
    assert after["top1"] > MIN_TRANSFER_TOP1, after
