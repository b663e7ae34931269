"""The PyTorch code a user would otherwise write: torchvision's fine-tuning loop, as fast as torch makes it.

ResNet50 in channels_last, a new ``fc``, SGD with momentum. Frozen backbone the usual torch way:
``requires_grad=False`` on every backbone parameter, so autograd only differentiates ``fc``. bfloat16 uses
``torch.autocast`` (AMP). torch is imported here only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _torch() -> Any:
    import torch

    return torch


def setup(threads: int | None, device: str) -> Any:
    torch = _torch()
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return dev


def sync(dev: Any) -> None:
    if dev.type == "cuda":
        _torch().cuda.synchronize()


def _model(arch: str, num_classes: int, dev: Any) -> Any:
    torch = _torch()
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model.to(dev, memory_format=torch.channels_last)


def _batch(batch: int, size: int, num_classes: int, dev: Any) -> tuple[Any, Any]:
    torch = _torch()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 3, size, size), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, num_classes, batch))
    return x.to(dev, memory_format=torch.channels_last), y.to(dev)


def train_step_fn(
    mode: str, *, arch: str, batch: int, size: int, num_classes: int, dtype: str, dev: Any
) -> Callable[[], None]:
    """One optimizer step on a fixed batch. mode: "full" | "frozen" | "inference"."""
    torch = _torch()
    model = _model(arch, num_classes, dev)
    x, y = _batch(batch, size, num_classes, dev)
    amp = dtype == "bfloat16"
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                model(x)
            sync(dev)

        return infer
    if mode == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sync(dev)

    return step


def linear_probe_fn(
    *, arch: str, images: np.ndarray, labels: np.ndarray, batch: int, epochs: int, num_classes: int, dev: Any
) -> Callable[[], None]:
    """``epochs`` epochs of the usual torch linear probe: frozen backbone forward every batch, fc trained.

    images: ``[N, H, W, 3]`` float32 (converted to NCHW channels_last once, outside the timed part).
    """
    torch = _torch()
    model = _model(arch, num_classes, dev)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("fc.")
    model.eval()  # backbone BN on running stats, as jaxtl's frozen backbone
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(
        dev, memory_format=torch.channels_last
    )
    y_all = torch.from_numpy(labels.astype(np.int64)).to(dev)
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(images) // batch * batch

    def run() -> None:
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            perm = torch.randperm(len(images), generator=gen)[:n].to(dev)
            for i in range(0, n, batch):
                idx = perm[i : i + batch]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_all[idx]), y_all[idx])
                loss.backward()
                opt.step()
        sync(dev)

    return run
