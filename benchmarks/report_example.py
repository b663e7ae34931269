"""The README's per-class report picture from a real run: ``python -m benchmarks.report_example``.

A few-label fine-tune on scikit-learn's digits (16 px, ``labels_per_class`` labeled images per class, a quarter of
the data held out and never trained on): convnet_small from a fresh init, trained in full with a weight EMA and
label smoothing, TensorBoard on; then ``evaluate(EvaluateConfig(split="test", report=True))`` of the EMA classifier
on the held-out split. Writes ``benchmarks/results/report/`` (``confusion.png``, ``report.json``, ``summary.json``:
the run's options and both classifiers' held-out metrics) and prints the report's table. ``--workdir DIR`` keeps the
fine-tune's work directory (checkpoints, ``metrics.jsonl``, ``tensorboard/``) for ``tensorboard --logdir DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

OUT = common.RESULTS_DIR / "report"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels-per-class", type=int, default=10, help="labeled training images per class (default 10)")
    p.add_argument("--epochs", type=int, default=60, help="(default 60)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.add_argument("--workdir", type=Path, help="keep the fine-tune's work directory here (default: a temporary one)")
    p.add_argument("--out", type=Path, default=OUT, help=f"folder of the results (default {OUT})")
    p.add_argument("--smoke", action="store_true", help="2 epochs: checks the script runs")
    args = p.parse_args(argv)
    common.prepare_backend("cpu")
    import jax
    import numpy as np

    import jaxtl
    from jaxtl.models import ModelCard
    from jaxtl.recipes import EvaluateConfig, FinetuneConfig, Split, evaluate, finetune
    from jaxtl.train import EMA, Loop, Optimizer
    from jaxtl.train.config import Regularization

    epochs = 2 if args.smoke else args.epochs
    module = jaxtl.create("convnet_small", num_classes=0)
    variables = jax.device_get(module.init(jax.random.PRNGKey(args.seed), np.zeros((1, 16, 16, 3)), train=False))
    card = ModelCard.for_arch("convnet_small", 0, image_size=16, kind="encoder", source="fresh init")
    config = FinetuneConfig(
        mode="full",
        optimizer=Optimizer("adamw", lr=3e-3, weight_decay=1e-4, warmup_steps=0 if args.smoke else 10),
        loop=Loop(epochs=epochs, batch_size=32, seed=args.seed, ema=EMA(0.98)),
        split=Split(test_fraction=0.25, labels_per_class=args.labels_per_class),
        regularization=Regularization(label_smoothing=0.1),
    )
    with tempfile.TemporaryDirectory(prefix="jaxtl-report-") as tmp:
        workdir = args.workdir or Path(tmp) / "run"
        t0 = time.perf_counter()
        result = finetune(config, (module, variables, card), "digits", workdir=workdir, progress=False)
        train_s = time.perf_counter() - t0
        evaluated = evaluate(
            EvaluateConfig(split="test", report=True), workdir / "classifier_ema", "digits", workdir=Path(tmp) / "ev"
        )
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("confusion.png", "report.json"):
            shutil.copyfile(Path(tmp) / "ev" / "report" / name, args.out / name)
    report = evaluated.pop("report")
    summary = {
        "what": "convnet_small from a fresh init, fine-tuned in full on digits (16 px) with a weight EMA; the EMA "
        "classifier's per-class report on the held-out quarter",
        "config": dataclasses.asdict(config),
        "train_size": result.train_size,
        "train_seconds": round(train_s, 1),
        "held_out": {k: v for k, v in result.metrics.items() if not k.startswith("ema_")},
        "held_out_ema": evaluated,
        "machine": common.machine_info("cpu"),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(report.text())
    print(f"\nheld-out top-1: model {result.metrics['top1']:.3f}, EMA {evaluated['top1']:.3f}; written to {args.out}")
    return summary


if __name__ == "__main__":
    main()
