"""The #24 options on the command line: each flag builds the library's config (the same objects a Python user
writes), a bad combination is one line in flag terms before any work, and one fine-tune with every option on
writes the EMA classifier and TensorBoard files; ``evaluate --report`` prints the per-class table or writes it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxtl
from jaxtl import cli_options as opts
from jaxtl.cli import build_parser, main
from jaxtl.models import ModelCard
from jaxtl.recipes import FinetuneConfig, Input, PretrainConfig, Split
from jaxtl.train import EMA, Loop, Optimizer, Stopping, read_scalars, save_variables
from jaxtl.train.config import Regularization


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


FT = ("finetune", "--init", "enc", "--data", "digits", "--workdir", "w")


def test_finetune_flags_build_the_library_config():
    a = _args(
        *FT,
        *("--steps", "12", "--batch-size", "16", "--accumulate", "3", "--label-smoothing", "0.1"),
        *("--class-weights", "1,2.5,1", "--mixup", "0.2", "--cutmix", "1.0", "--ema", "--ema-every", "2"),
        *("--early-stopping", "4", "--reduce-lr-on-plateau", "1", "--reduce-lr-factor", "0.5"),
        *("--stopping-metric", "top1", "--min-delta", "0.01", "--eval-every", "3", "--no-restore-best"),
    )
    stopping = Stopping(
        metric="top1", patience=4, min_delta=0.01, restore_best=False, reduce_patience=1, reduce_factor=0.5
    )
    loop = Loop(batch_size=16, steps=12, eval_every=3, accumulate=3, ema=EMA(0.9998, every=2), stopping=stopping)
    want = FinetuneConfig(
        optimizer=Optimizer(),
        loop=loop,
        input=Input(),
        split=Split(),
        regularization=Regularization(0.1, (1.0, 2.5, 1.0), 0.2, 1.0),
    )
    assert opts.finetune_config(a) == want
    bare = opts.finetune_config(_args(*FT, "--ema", "0.99", "--class-weights", "balanced"))
    assert bare.loop.ema == EMA(0.99) and bare.regularization.class_weights == "balanced"
    assert opts.finetune_config(_args(*FT)) == FinetuneConfig(optimizer=Optimizer(), loop=Loop(epochs=5))


def test_pretrain_flags_build_the_library_config():
    a = _args("pretrain", "--data", "digits", "--workdir", "w", "--steps", "4", "--accumulate", "2")
    assert opts.pretrain_config(a).loop == Loop(steps=4, accumulate=2) and not a.no_tensorboard
    assert _args("pretrain", "--data", "digits", "--workdir", "w", "--no-tensorboard").no_tensorboard


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("--freeze", "linear-probe", "--mixup", "0.2"),
            "--freeze linear-probe trains a head on features computed "
            "once, without mixup/cutmix (--mixup 0.2); use --freeze backbone",
        ),
        (("--no-feature-cache", "--ema"), None),  # allowed: the per-step path keeps an average
        (("--ema-every", "2"), "--ema-every tunes --ema, which is not given"),
        (("--min-delta", "0.1"), "--min-delta tunes --early-stopping or --reduce-lr-on-plateau, which is not given"),
        (("--early-stopping", "2", "--test-fraction", "0"), "watch the held-out split's metric: --test-fraction must"),
        (("--steps", "10", "--accumulate", "4"), "the run has 10 batches, not a multiple of --accumulate 4"),
        (("--class-weights", "one,two"), "argument --class-weights: expected 'balanced' or one number per class"),
        (("--mixup", "-1"), "--mixup must be >= 0, got -1.0"),
        (("--ema", "1.5"), "--ema decay must lie in [0, 1), got 1.5"),
        (("--early-stopping", "0"), "--early-stopping must be >= 1, got 0"),
    ],
)
def test_bad_combinations_are_one_line_in_flag_terms(extra, message, capsys):
    if message is None:
        opts.finetune_config(_args(*FT, *extra))
        return
    assert main([*FT, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxtl: error: ") and "\n" not in err
    assert message in err, err


# --- one run with every option on -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    module = jaxtl.create("convnet_small", num_classes=0)
    variables = jax.device_get(module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)), train=False))
    card = ModelCard.for_arch("convnet_small", 0, image_size=16, kind="encoder")
    return save_variables(tmp_path_factory.mktemp("enc") / "encoder", variables, card)


@pytest.fixture(scope="module")
def everything(encoder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli")
    argv = ["finetune", "--init", str(encoder), "--data", "digits", "--workdir", str(workdir), "--no-progress"]
    argv += ["--steps", "8", "--batch-size", "32", "--lr", "0.03", "--accumulate", "2", "--ema", "0.8"]
    argv += ["--mixup", "0.2", "--cutmix", "1.0", "--label-smoothing", "0.1", "--class-weights", "balanced"]
    argv += ["--early-stopping", "3", "--eval-every", "2"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return workdir, out.getvalue()


def test_a_finetune_with_every_option(everything):
    workdir, out = everything
    assert "; EMA top-1 " in out and f"(EMA -> {workdir / 'classifier_ema'})" in out
    assert (workdir / "classifier" / "heldout.json").exists() and (workdir / "classifier_ema" / "heldout.json").exists()
    identity = json.loads((workdir / "run.json").read_text())["identity"]
    assert identity["loop.accumulate"] == 2 and identity["loop.ema"]["decay"] == 0.8
    assert identity["mixup_alpha"] == 0.2 and identity["class_weights"] == "balanced"
    scalars = read_scalars(workdir / "tensorboard")
    assert {"train/loss", "train/lr", "eval/top1", "eval_ema/top1"} <= scalars.keys()
    assert [s for s, _ in scalars["eval/loss"]] == [2, 4, 6, 8]


def test_evaluate_report_prints_the_table_or_writes_it(everything, tmp_path, capsys):
    workdir = everything[0]
    assert main(["evaluate", str(workdir / "classifier_ema"), "--data", "digits", "--split", "test", "--report"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "macro avg" in out and "worst-classified" in out
    report_dir = tmp_path / "ev"
    argv = ["evaluate", str(workdir / "classifier"), "--data", "digits", "--report", "--workdir", str(report_dir)]
    assert main(argv) == 0
    assert f"per-class report -> {report_dir / 'report'}" in capsys.readouterr().out
    report = json.loads((report_dir / "report" / "report.json").read_text())
    assert [c["class"] for c in report["per_class"]] == [str(i) for i in range(10)] and len(report["worst"]) == 20
    assert (report_dir / "report" / "confusion.png").stat().st_size > 1000


def test_no_tensorboard(encoder, tmp_path):
    argv = ["finetune", "--init", str(encoder), "--data", "digits", "--workdir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--steps", "2", "--no-tensorboard"]) == 0
    assert (tmp_path / "classifier").exists() and not (tmp_path / "tensorboard").exists()


def test_pretrain_cli_accumulates_and_logs_reconstructions(tmp_path):
    from jaxtl.train import read_images

    argv = ["pretrain", "--data", "digits", "--channels", "1", "--image-size", "16", "--workdir", str(tmp_path)]
    assert main([*argv, "--steps", "4", "--batch-size", "32", "--accumulate", "2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "run.json").read_text())["identity"]["loop.accumulate"] == 2
    ((step, picture),) = read_images(tmp_path / "tensorboard")["reconstructions"]
    assert step == 4 and picture.shape[0] == 2 * 16  # inputs over their reconstructions
    assert isinstance(PretrainConfig(), PretrainConfig)
