"""The PyTorch code a user would otherwise write: torchvision's fine-tuning loop, as fast as torch makes it.

A torchvision model (ResNet50 unless told otherwise; a ViT or ConvNeXt too) in channels_last, a new head (its last
``nn.Linear``: ``fc``, ``heads.head``, ``classifier.2``), SGD with momentum. Frozen backbone the usual torch way:
``requires_grad=False`` on every backbone parameter, so autograd only differentiates the head. bfloat16 uses
``torch.autocast`` (AMP). torch is imported here only (and no jax: the folder fine-tune's torch worker starts
without it).
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


CONVNET_WIDTHS = (32, 64, 128)


def _conv_bn_relu(cin: int, cout: int) -> list[Any]:
    nn = _torch().nn
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _convnet_encoder(widths: tuple[int, ...]) -> list[Any]:
    """jaxtl's ConvNet stages: (conv3x3-BN-relu) x2, then 2x2 max-pool, per width."""
    layers: list[Any] = []
    cin = 3
    for w in widths:
        layers += [*_conv_bn_relu(cin, w), *_conv_bn_relu(w, w), _torch().nn.MaxPool2d(2, 2)]
        cin = w
    return layers


def _convnet(num_classes: int) -> Any:
    """jaxtl's ``convnet_small`` classifier in torch; the head is ``.fc`` as in torchvision."""
    nn = _torch().nn

    class ConvNet(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*_convnet_encoder(CONVNET_WIDTHS))
            self.fc = nn.Linear(CONVNET_WIDTHS[-1], num_classes)

        def forward(self, x: Any) -> Any:
            return self.fc(self.features(x).mean(dim=(2, 3)))

    return ConvNet()


def torchvision_model(arch: str, size: int = 224, shrink: dict[str, Any] | None = None) -> Any:
    """torchvision's ``arch`` (random weights); a ViT built for ``size`` px. ``shrink`` (``--smoke``): the same
    family at a few layers (a ViT's ``VisionTransformer`` arguments, a ConvNeXt's ``block_setting`` tuples), as
    ``jaxtl.create(arch, **shrink)`` builds it."""
    import torchvision

    if arch.startswith("vit_"):
        if shrink:
            return torchvision.models.VisionTransformer(image_size=size, **shrink)
        return getattr(torchvision.models, arch)(weights=None, image_size=size)
    if arch.startswith("convnext_") and shrink:
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        blocks = [CNBlockConfig(*b) for b in shrink["block_setting"]]
        return ConvNeXt(blocks, stochastic_depth_prob=shrink.get("stochastic_depth_prob", 0.1))
    return getattr(torchvision.models, arch)(weights=None)


def head_name(model: Any) -> str:
    """The module name of a torchvision classifier's head: its last ``nn.Linear``."""
    linears = [name for name, m in model.named_modules() if isinstance(m, _torch().nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head")
    return linears[-1]


def _model(
    arch: str, num_classes: int, dev: Any, size: int = 224, shrink: dict[str, Any] | None = None
) -> tuple[Any, str]:
    """``(model on dev in channels_last, its head's name)`` with a new ``num_classes`` head."""
    torch = _torch()
    torch.manual_seed(0)
    if arch == "convnet_small":
        model, head = _convnet(num_classes), "fc"
    else:
        model = torchvision_model(arch, size, shrink)
        head = head_name(model)
        parent, _, leaf = head.rpartition(".")
        old = model.get_submodule(head)
        setattr(model.get_submodule(parent) if parent else model, leaf, torch.nn.Linear(old.in_features, num_classes))
    return model.to(dev, memory_format=torch.channels_last), head


def _batch(batch: int, size: int, num_classes: int, dev: Any) -> tuple[Any, Any]:
    torch = _torch()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 3, size, size), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, num_classes, batch))
    return x.to(dev, memory_format=torch.channels_last), y.to(dev)


def train_step_fn(
    mode: str,
    *,
    arch: str,
    batch: int,
    size: int,
    num_classes: int,
    dtype: str,
    dev: Any,
    sync_each: bool = True,
    shrink: dict[str, Any] | None = None,
) -> Callable[[], None]:
    """One optimizer step on a fixed batch. mode: "full" | "frozen" | "inference".

    ``sync_each=False``: the step returns without waiting for the GPU (time n steps, then :func:`sync` once).
    ``shrink``: see :func:`torchvision_model`.
    """
    torch = _torch()
    model, head = _model(arch, num_classes, dev, size, shrink)
    x, y = _batch(batch, size, num_classes, dev)
    amp = dtype == "bfloat16"
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                model(x)
            if sync_each:
                sync(dev)

        return infer
    if mode == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(head + ".")
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
        if sync_each:
            sync(dev)

    return step


def linear_probe_fn(
    *,
    arch: str,
    images: np.ndarray,
    labels: np.ndarray,
    batch: int,
    epochs: int,
    num_classes: int,
    dev: Any,
    shrink: dict[str, Any] | None = None,
) -> Callable[[], None]:
    """``epochs`` epochs of the usual torch linear probe: frozen backbone forward every batch, the head trained.

    images: ``[N, H, W, 3]`` float32 (converted to NCHW channels_last once, outside the timed part).
    """
    torch = _torch()
    model, head = _model(arch, num_classes, dev, images.shape[1], shrink)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(head + ".")
    model.eval()  # backbone BN on running stats, as jaxtl's frozen backbone
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(
        dev, memory_format=torch.channels_last
    )
    y_all = torch.from_numpy(labels.astype(np.int64)).to(dev)
    opt = torch.optim.SGD(model.get_submodule(head).parameters(), lr=0.01, momentum=0.9)
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


def _autoencoder(widths: tuple[int, ...], decoder_widths: tuple[int, ...], size: int) -> Any:
    """jaxtl's ``Autoencoder(ConvNet(num_classes=0))`` written in torch: same layers, sizes and resize rule."""
    nn = _torch().nn
    enc = _convnet_encoder(widths)
    cin = widths[-1]
    h = size // 2 ** len(widths)
    k = len(decoder_widths)
    dec: list[Any] = []
    for i, w in enumerate(decoder_widths):
        t = (i + 1) / k
        out = size if i == k - 1 else max(1, round(h * (size / h) ** t))
        dec += [nn.Upsample(size=(out, out), mode="bilinear", align_corners=False), *_conv_bn_relu(cin, w)]
        cin = w
    dec += [nn.Conv2d(cin, 3, 3, 1, 1, bias=True), nn.Sigmoid()]
    return nn.Sequential(*enc, *dec)


def autoencoder_step_fn(
    *, batch: int, size: int, widths: tuple[int, ...], decoder_widths: tuple[int, ...], dtype: str, dev: Any
) -> Callable[[], None]:
    """One MSE reconstruction step of the ConvNet autoencoder (Adam, as ``jaxtl pretrain``)."""
    torch = _torch()
    torch.manual_seed(0)
    model = _autoencoder(widths, decoder_widths, size).to(dev, memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(size=(batch, 3, size, size)).astype(np.float32))
    x = x.to(dev, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = dtype == "bfloat16"
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
            out = model(x)
        loss = torch.nn.functional.mse_loss(out.float(), x)
        loss.backward()
        opt.step()
        sync(dev)

    return step


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices as :func:`jaxtl.data.train_test_split` draws them (numpy only, so the torch side
    trains and evaluates on the same images without importing jax): ``round(test_fraction * N)`` test examples
    shared out over the classes by largest remainder, each class's drawn from one ``default_rng(seed)``."""
    labels = np.asarray(labels)
    n_test = round(test_fraction * len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_test / counts.sum())
    per_class = np.floor(exact).astype(np.int64)
    per_class[np.argsort(-(exact - per_class), kind="stable")[: n_test - int(per_class.sum())]] += 1
    rng = np.random.default_rng(seed)
    test = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)])
    )
    return np.setdiff1d(np.arange(len(labels)), test, assume_unique=True), test


def folder_finetune(
    *,
    folder: str,
    weights: str,
    mode: str,
    size: int,
    batch: int,
    epochs: int,
    workers: int,
    lr: float,
    momentum: float,
    test_fraction: float,
    seed: int,
    eval_batch: int = 256,
) -> dict[str, Any]:
    """What a PyTorch user writes to fine-tune torchvision's resnet18 on an image folder, run once.

    ``ImageFolder`` + ``DataLoader(num_workers=workers, persistent_workers)``; train transform ``RandomResizedCrop
    (size)`` + ``RandomHorizontalFlip`` + ``ToImage``/``ToDtype``/``Normalize`` (ImageNet mean/std), eval
    ``Resize(round(size * 256 / 224))`` + ``CenterCrop(size)``; a new ``fc``; SGD with momentum at a constant
    ``lr``; ``epochs`` epochs over the train split (``drop_last``), then top-1 on the held-out split.
    ``mode="frozen"``: ``requires_grad=False`` on the backbone and the model in eval mode (BatchNorm on running
    averages, as jaxtl's frozen backbone); ``"full"``: everything trains, BatchNorm in train mode.
    Returns ``{"steps", "train_images", "test_images", "top1", "step_images_per_s"}`` (the last: the median
    rate of the steps after each epoch's first, data loading and step together).
    """
    import time

    torch = _torch()
    import torchvision
    from torchvision import datasets
    from torchvision.transforms import v2

    torch.manual_seed(seed)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    to_input = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *to_input])
    eval_tf = v2.Compose([v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size), *to_input])
    train_ds = datasets.ImageFolder(folder, transform=train_tf)
    train_idx, test_idx = stratified_split(np.asarray(train_ds.targets), test_fraction, seed)
    test_ds = torch.utils.data.Subset(datasets.ImageFolder(folder, transform=eval_tf), test_idx.tolist())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(train_ds, train_idx.tolist()),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.fc = torch.nn.Linear(model.fc.in_features, len(train_ds.classes))
    if mode == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    elif mode != "full":
        raise ValueError(f"mode must be 'frozen' or 'full', got {mode!r}")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps, rates = 0, []
    for _ in range(epochs):
        model.train(mode == "full")
        t = time.perf_counter()
        for b, (x, y) in enumerate(loader):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            steps += 1
            now = time.perf_counter()
            if b:  # the first batch of an epoch waits for its workers
                rates.append(batch / (now - t))
            t = now
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in torch.utils.data.DataLoader(test_ds, batch_size=eval_batch, num_workers=workers):
            correct += int((model(x).argmax(1) == y).sum())
    del loader
    return {
        "steps": steps,
        "train_images": steps * batch,
        "test_images": len(test_idx),
        "top1": correct / len(test_idx),
        "step_images_per_s": float(np.median(rates)) if rates else None,
    }
