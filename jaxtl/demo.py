"""``jaxtl demo``: does autoencoder pretraining on unlabeled digits help when only a few labels exist? Measured.

Digits (scikit-learn's 1797 8x8 images, upsampled) are split once into a stratified held-out test set and a pool.
A denoising convolutional autoencoder is pretrained on the whole pool without labels. Then, for each number of
labels per class and each seed (which picks the labeled examples, the head init and the batch order), four arms are
trained on the same labeled examples and evaluated on the test set:

- ``scratch``: the same ConvNet, randomly initialised, all layers trained;
- ``linear_probe``: the pretrained encoder frozen, its pooled features cached, a linear head trained on them;
- ``frozen``: the pretrained encoder frozen, the head trained through ``fit`` (eval-mode BatchNorm); without
  augmentation this is the linear probe computed the slow way, so the two must agree (a consistency check);
- ``full``: the pretrained encoder and a new head, all layers trained.

Every arm gets the same budget: the same number of steps, batch size, optimizer and schedule; the head-only arms use
``head_lr``, the arms that train the whole network ``lr``. Images are fed in ``[0, 1]`` to every arm.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl._cpu_tuning import tune_cpu
from jaxtl._provenance import machine, source_revision
from jaxtl.compile_cache import enable_compile_cache
from jaxtl.data.in_memory import load_digits
from jaxtl.data.splits import labeled_unlabeled_split, train_test_split
from jaxtl.models.autoencoder import ConvNet
from jaxtl.recipes import (
    FinetuneConfig,
    PretrainConfig,
    Split,
    build_classifier,
    evaluate_classifier,
    finetune,
    parse_denoise,
    pretrain,
)
from jaxtl.recipes.pretraining import corruption
from jaxtl.train.config import Loop, Optimizer
from jaxtl.train.progress import Progress

__all__ = ["ARMS", "DemoConfig", "run_demo"]

ARMS = ("scratch", "linear_probe", "frozen", "full")


@dataclasses.dataclass(frozen=True)
class DemoPretrain:
    """The autoencoder's pretraining on the unlabeled pool."""

    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    denoise: tuple[Any, ...] | None = ("noise", 0.3)
    decoder_widths: tuple[int, ...] = (64, 32, 16)


@dataclasses.dataclass(frozen=True)
class DemoBudget:
    """What every arm gets: steps of batch ``min(batch_size, labeled examples)``, ``lr`` for the arms that train
    the whole network, ``head_lr`` for the head-only ones."""

    steps: int = 100
    batch_size: int = 32
    lr: float = 3e-3
    head_lr: float = 1e-2


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything the demo's numbers depend on (written into ``results.json``)."""

    image_size: int = 16
    channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64)
    test_fraction: float = 0.25
    split_seed: int = 0
    labels_per_class: tuple[int, ...] = (1, 5, 10)
    seeds: int = 3
    optimizer: str = "adamw"
    parallel: str = "none"
    arms: tuple[str, ...] = ARMS
    pretrain: DemoPretrain = DemoPretrain()
    budget: DemoBudget = DemoBudget()

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A few seconds of training: for tests and a smoke run (numbers are not meaningful)."""
        base: dict[str, Any] = dict(
            widths=(8, 16),
            labels_per_class=(1, 5),
            seeds=1,
            pretrain=DemoPretrain(steps=20, decoder_widths=(16, 8)),
            budget=DemoBudget(steps=10),
        )
        return cls(**{**base, **overrides})

    def check(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {self.arms}")
        if self.seeds < 1 or not self.labels_per_class or min(self.labels_per_class) < 1:
            raise ValueError(f"need seeds >= 1 and labels_per_class >= 1, got {self.seeds}, {self.labels_per_class}")
        if self.image_size < 2 ** len(self.widths):
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.widths)} ConvNet stages")
        parse_denoise(self.pretrain.denoise)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("jaxtl", "jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _summary(runs: list[dict[str, Any]], cfg: DemoConfig) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in cfg.arms:
        out[arm] = {}
        for lpc in cfg.labels_per_class:
            accs = [r["top1"] for r in runs if r["arm"] == arm and r["labels_per_class"] == lpc]
            out[arm][str(lpc)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "top1": accs}
    return out


def format_table(summary: dict[str, dict[str, dict[str, Any]]], cfg: DemoConfig) -> str:
    """The summary as a text table: arms as rows, labels per class as columns, mean +/- std test accuracy (%)."""
    head = "arm".ljust(14) + "".join(f"{lpc} label(s)/class".rjust(20) for lpc in cfg.labels_per_class)
    lines = [head, "-" * len(head)]
    for arm, cols in summary.items():
        cells = [cols[str(lpc)] for lpc in cfg.labels_per_class]
        lines.append(
            arm.ljust(14) + "".join(f"{100 * c['mean']:.1f} +/- {100 * c['std']:.1f}".rjust(20) for c in cells)
        )
    return "\n".join(lines)


def _reconstruction_figure(images: np.ndarray, corrupted: np.ndarray | None, recon: np.ndarray) -> Any:
    """Rows of ``[n, H, W, C]`` images: the inputs, their corrupted versions (when the autoencoder denoises) and the
    autoencoder's reconstructions of what it was given (the corrupted inputs: what a denoising autoencoder is
    trained to undo)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if corrupted is None:
        rows = [("input", images), ("reconstruction", recon)]
        title = "held-out digits: inputs and the autoencoder's reconstructions"
    else:
        rows = [("input", images), ("corrupted", corrupted), ("recon. of\ncorrupted", recon)]
        title = "held-out digits: inputs, corrupted inputs, the autoencoder's reconstructions of the corrupted inputs"
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.2 * len(rows)), squeeze=False)
    for r, (name, arr) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(np.clip(arr[i, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _accuracy_figure(summary: dict[str, dict[str, dict[str, Any]]], cfg: DemoConfig) -> Any:
    """Mean +/- std test accuracy per arm against labels per class; every arm visible even where two coincide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(6, 4.4))
    x = list(cfg.labels_per_class)
    arms = list(summary)
    means = {arm: [100 * summary[arm][str(k)]["mean"] for k in x] for arm in arms}
    for i, arm in enumerate(arms):
        stds = [100 * summary[arm][str(k)]["std"] for k in x]
        # Each arm a little apart on the (log) x axis, with its own marker and line style, so arms with equal
        # numbers (frozen and linear_probe train the same head on the same features) are side by side, not hidden.
        shift = 1.04 ** (i - (len(arms) - 1) / 2)
        ax.errorbar(
            [k * shift for k in x],
            means[arm],
            yerr=stds,
            marker="osD^v"[i % 5],
            linestyle=("-", "--", ":", "-.")[i % 4],
            mfc="none" if i % 2 else None,
            capsize=3,
            label=arm,
        )
    same = _coinciding(means)
    if same:
        note = "; ".join(" = ".join(group) for group in same)
        ax.annotate(
            f"equal at every point: {note} (drawn side by side)",
            xy=(0.01, 0.01),
            xycoords="axes fraction",
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([str(k) for k in x])
    # Plain labels at the label counts only: a log axis spanning less than a decade would also label its minor
    # ticks (2x10^0, 3x10^0, ...).
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("labeled examples per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits: mean +/- std over {cfg.seeds} seed(s), {cfg.budget.steps} steps per arm", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _save(fig: Any, path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)


def _coinciding(means: dict[str, list[float]], tol: float = 0.05) -> list[list[str]]:
    """Groups of arms whose mean accuracies (in %) agree within ``tol`` at every label count."""
    groups: list[list[str]] = []
    for arm, values in means.items():
        for group in groups:
            if all(abs(a - b) <= tol for a, b in zip(means[group[0]], values)):
                group.append(arm)
                break
        else:
            groups.append([arm])
    return [g for g in groups if len(g) > 1]


def run_demo(
    out_dir: str | pathlib.Path, *, config: DemoConfig | None = None, progress: bool = True, verbose: bool = True
) -> dict[str, Any]:
    """Run the pretrain -> transfer -> few-label comparison; write ``results.json``, ``reconstructions.png`` and
    ``accuracy.png`` into ``out_dir``; print the table when ``verbose``. Returns the results dict.

    Enables JAX's persistent compilation cache where the CLI keeps it (``$JAXTL_COMPILE_CACHE``, else
    ``~/.cache/jaxtl/xla``: :func:`jaxtl.compile_cache.enable_compile_cache`) unless one is already configured.
    """
    tune_cpu()  # XLA:CPU flags and malloc settings; a no-op after the CLI's own call
    cfg = config or DemoConfig()
    cfg.check()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = enable_compile_cache()  # where the CLI keeps it: $JAXTL_COMPILE_CACHE, else ~/.cache/jaxtl/xla
    t_start = time.perf_counter()

    data = load_digits(size=cfg.image_size, channels=cfg.channels)
    pool, test = train_test_split(data, cfg.test_fraction, cfg.split_seed)
    shape = (cfg.image_size, cfg.image_size, cfg.channels)
    n_runs = len(cfg.labels_per_class) * cfg.seeds * len(cfg.arms)

    # One reporter over every step of the demo: a bar on a terminal, a line every 30 s or 10% otherwise.
    bar = Progress(cfg.pretrain.steps + n_runs * cfg.budget.steps, desc="pretrain", enabled=progress)

    def tick(_step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("loss")
        bar.update(1, **({} if loss is None else {"loss": f"{loss:.4f}"}))

    bar.start()

    t0 = time.perf_counter()
    encoder = ConvNet(num_classes=0, widths=cfg.widths)
    pre_config = PretrainConfig(
        channels=cfg.channels,
        denoise=cfg.pretrain.denoise,
        decoder_widths=cfg.pretrain.decoder_widths,
        optimizer=Optimizer(name=cfg.optimizer, lr=cfg.pretrain.lr),
        loop=Loop(
            steps=cfg.pretrain.steps,
            batch_size=min(cfg.pretrain.batch_size, len(pool)),
            seed=cfg.split_seed,
            parallel=cfg.parallel,
        ),
    )
    pretrained = pretrain(pre_config, pool, init=encoder, progress=False, callbacks=(tick,))
    ae, ae_vars, ae_hist = pretrained.state.module, pretrained.state.variables, pretrained.history
    pretrain_s = time.perf_counter() - t0
    train_losses = [h["loss"] for h in ae_hist if h.get("split") == "train"]
    show = test.images[:10]
    test_mse = float(np.mean((np.asarray(ae.apply(ae_vars, jnp.asarray(test.images), train=False)) - test.images) ** 2))
    denoise = pre_config.denoise
    corrupt = corruption(denoise)
    noisy = None
    given = jnp.asarray(show)
    if corrupt is not None:
        given = corrupt(jax.random.PRNGKey(0), given)  # the model's input during pretraining
        noisy = np.asarray(given)[..., : cfg.channels]
    recon = np.asarray(ae.apply(ae_vars, given, train=False))
    _save(_reconstruction_figure(show, noisy, recon), out / "reconstructions.png")

    runs: list[dict[str, Any]] = []
    for lpc in cfg.labels_per_class:
        for seed in range(cfg.seeds):
            labeled, _ = labeled_unlabeled_split(pool, lpc, seed)
            batch_size = min(cfg.budget.batch_size, len(labeled))
            for arm in cfg.arms:
                bar.set_description(f"{arm} {lpc}/class seed {seed}")
                t1 = time.perf_counter()
                rng = jax.random.PRNGKey(1000 + seed)
                module: nn.Module
                if arm == "scratch":
                    module = ConvNet(num_classes=data.num_classes, widths=cfg.widths)
                    variables = module.init(rng, jnp.zeros((1, *shape), jnp.float32), train=False)
                else:
                    module, variables = build_classifier((ae.encoder, ae_vars), data.num_classes, rng, shape)
                ft_config = FinetuneConfig(
                    mode="full" if arm == "scratch" else arm,
                    optimizer=Optimizer(
                        name=cfg.optimizer,
                        lr=cfg.budget.head_lr if arm in ("linear_probe", "frozen") else cfg.budget.lr,
                    ),
                    loop=Loop(steps=cfg.budget.steps, batch_size=batch_size, seed=seed, parallel=cfg.parallel),
                    split=Split(test_fraction=0),
                    # frozen runs the backbone every step, so its agreement with linear_probe checks the fast path
                    feature_cache=False if arm == "frozen" else None,
                )
                variables = finetune(
                    ft_config, (module, variables), labeled, progress=False, callbacks=(tick,)
                ).variables
                metrics = evaluate_classifier(module, variables, test)
                runs.append(
                    {
                        "arm": arm,
                        "labels_per_class": lpc,
                        "seed": seed,
                        "n_labeled": len(labeled),
                        "batch_size": batch_size,
                        **metrics,
                        "seconds": time.perf_counter() - t1,
                    }
                )
    bar.set_description("done")
    bar.close()

    summary = _summary(runs, cfg)
    b = cfg.budget
    total_s = time.perf_counter() - t_start
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "data": {"dataset": "sklearn digits", "n": len(data), "pool": len(pool), "test": len(test), "shape": shape},
        "budget": (
            f"every arm: {b.steps} steps of batch min({b.batch_size}, labeled examples), {cfg.optimizer} with "
            f"cosine decay; lr {b.lr} (scratch, full) / {b.head_lr} (linear_probe, frozen); no augmentation"
        ),
        "pretrain": {
            "steps": cfg.pretrain.steps,
            "denoise": denoise,
            "train_loss_first": train_losses[0],
            "train_loss_last": train_losses[-1],
            "test_mse": test_mse,
            "seconds": pretrain_s,
        },
        "runs": runs,
        "summary": summary,
        "timings": {"total_s": total_s, "pretrain_s": pretrain_s, "finetune_s": sum(r["seconds"] for r in runs)},
        "versions": _versions(),
        "machine": machine(),
        **source_revision(),  # commit, commit_dirty: shown with the README table
        "devices": [str(d) for d in jax.devices()],
        "compile_cache": cache,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _save(_accuracy_figure(summary, cfg), out / "accuracy.png")
    if verbose:
        print(f"test accuracy (%) on {len(test)} held-out digits, mean +/- std over {cfg.seeds} seed(s):")
        print(format_table(summary, cfg))
        print(results["budget"])
        if {"frozen", "linear_probe"} <= set(cfg.arms):
            print("frozen trains the same head on the same frozen features as linear_probe: equal numbers are expected")
        print(
            f"autoencoder: {cfg.pretrain.steps} steps on {len(pool)} unlabeled images, train mse "
            f"{train_losses[0]:.4f} -> {train_losses[-1]:.4f}, test mse {test_mse:.4f}"
        )
        print(f"wrote {out / 'results.json'}, {out / 'reconstructions.png'}, {out / 'accuracy.png'} in {total_s:.0f} s")
        sys.stdout.flush()
    return results
