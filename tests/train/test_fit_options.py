"""fit's options (#24) through the loop: gradient accumulation, weight EMA, mixup/cutmix, early stopping and
reduce-on-plateau, TensorBoard, class-weighted evaluation. Each is checked for what it means (against a plain
computation or an equivalent run), for exact resume after a crash past the last checkpoint, and for refusing what
it cannot do before anything is written."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from tiny import Tiny, tiny_dataset, tiny_variables

from jaxtl.errors import ConfigError
from jaxtl.train import (
    EMA,
    Checkpoints,
    CrossEntropy,
    Loop,
    Mixing,
    Optimizer,
    ParamGroups,
    Stopping,
    evaluate_variables,
    fit,
    read_images,
    read_scalars,
)

SGD = Optimizer("sgd", lr=0.1, momentum=0.0, schedule="constant")


@pytest.fixture(scope="module")
def model():
    module = Tiny()
    return module, jax.device_get(tiny_variables(module))


@pytest.fixture(scope="module")
def data():
    return tiny_dataset(40), tiny_dataset(16, seed=5)


def _fit(model, data, workdir=None, *, loop, every=2, callbacks=(), **kw):
    module, variables = model
    train, held = data
    kw.setdefault("optimizer", SGD)
    checkpoints = None if workdir is None else Checkpoints(workdir, every=every)
    return fit(
        module,
        variables,
        train,
        loop=loop,
        eval_data=held,
        checkpoints=checkpoints,
        callbacks=callbacks,
        progress=False,
        **kw,
    )


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_same(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


# --- gradient accumulation ---------------------------------------------------------------------------------------


def test_accumulated_micro_batches_make_the_big_batch_update(model, data):
    # The backbone frozen (BatchNorm on running averages): 2 micro-batches of 8 = one batch of 16 (the same
    # examples: batch b of 16 is micro-batches 2b, 2b + 1 of 8), the cosine schedule counting optimizer steps.
    cosine = Optimizer("sgd", lr=0.5, momentum=0.9)
    head = ParamGroups.head_only()
    small = _fit(model, data, loop=Loop(steps=4, batch_size=8, accumulate=2), optimizer=cosine, groups=head)
    big = _fit(model, data, loop=Loop(steps=2, batch_size=16), optimizer=cosine, groups=head)
    assert int(small.state.step) == 4 and int(big.state.step) == 2
    for a, b in zip(_leaves(small.state.params), _leaves(big.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    lrs = [r["lr"] for r in small.history if r["split"] == "train"]
    assert lrs == pytest.approx([0.5, 0.5, 0.25, 0.25])  # one rate per optimizer step: cos over 2 updates


def test_accumulation_needs_whole_optimizer_steps(model, data, tmp_path):
    with pytest.raises(ConfigError, match=r"10 batches, not a multiple of accumulate=4.*8 or 12") as e:
        Loop(steps=10, accumulate=4)
    assert e.value.field == "accumulate"
    # From epochs the length is known with the data only: refused before the work directory is touched.
    with pytest.raises(ConfigError, match=r"the run has 5 batches, not a multiple of accumulate=2"):
        _fit(model, data, tmp_path / "w", loop=Loop(epochs=1, batch_size=8, accumulate=2))
    assert not (tmp_path / "w").exists()


# --- weight EMA ----------------------------------------------------------------------------------------------------


def test_ema_is_evaluated_beside_the_model(model, data):
    # decay 0 without warm-up: the average is the model itself, so its evaluation must be the model's.
    same = _fit(model, data, loop=Loop(steps=4, batch_size=8, eval_every=2, ema=EMA(0.0, warmup=False)))
    evals = {(r["step"], r["split"]): r for r in same.history if r["split"] != "train"}
    assert sorted(evals) == [(2, "eval"), (2, "eval_ema"), (4, "eval"), (4, "eval_ema")]
    assert evals[(4, "eval")]["loss"] == evals[(4, "eval_ema")]["loss"]
    _assert_same(same.state.ema_variables, same.state.variables)
    # A real average lags the model; its eval line is the evaluation of state.ema_variables.
    avg = _fit(model, data, loop=Loop(steps=4, batch_size=8, ema=EMA(0.9)))
    ema = avg.state.ema_variables
    assert not np.allclose(ema["params"]["fc"]["kernel"], avg.state.params["fc"]["kernel"])
    last = [r for r in avg.history if r["split"] == "eval_ema"][-1]
    want = evaluate_variables(model[0], ema, data[1], 8)
    assert last["loss"] == pytest.approx(want["loss"], rel=1e-6) and last["top1"] == want["top1"]


# --- mixup / cutmix -------------------------------------------------------------------------------------------------


def test_mixing_through_fit_is_the_same_on_1_and_4_devices(model, data):
    loss = CrossEntropy(mixing=Mixing(0.4, 1.0))
    runs = {p: _fit(model, data, loop=Loop(steps=5, batch_size=8, parallel=p), loss=loss) for p in ("none", "pmap")}
    one, four = runs["none"], runs["pmap"]
    for a, b in zip(one.history, four.history):
        assert a["split"] == b["split"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a.get("top1") == b.get("top1")
    for a, b in zip(_leaves(one.state.params), _leaves(four.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = _fit(model, data, loop=Loop(steps=5, batch_size=8, parallel="none"))
    assert plain.history[0]["loss"] != pytest.approx(one.history[0]["loss"], rel=1e-3)  # mixing did mix


# --- early stopping and reduce-on-plateau ------------------------------------------------------------------------


LOUD = Optimizer("sgd", lr=2.0, momentum=0.9, schedule="constant")  # overshoots: the eval loss rises again


@pytest.mark.parametrize("with_workdir", [True, False])
def test_early_stopping_stops_and_keeps_the_best_evaluation(model, data, tmp_path, with_workdir):
    loop = Loop(steps=40, batch_size=8, eval_every=2, stopping=Stopping(patience=2))
    workdir = tmp_path / "w" if with_workdir else None
    run = _fit(model, data, workdir, loop=loop, optimizer=LOUD)
    (stop,) = [r for r in run.history if r["split"] == "stopped"]
    evals = [r for r in run.history if r["split"] == "eval"]
    best = min(evals, key=lambda r: r["loss"])
    assert stop["step"] < 40 and stop["best_step"] == best["step"] and stop["best"] == best["loss"]
    assert stop["step"] == evals[-1]["step"] == best["step"] + 2 * 2  # two evaluations without improvement
    assert max(r["step"] for r in run.history if r["split"] == "train") == stop["step"]
    # The result is the best evaluation's state: what a run of exactly that many steps ends with.
    short = _fit(model, data, loop=Loop(steps=best["step"], batch_size=8), optimizer=LOUD)
    _assert_same(run.state, short.state)
    if with_workdir:
        again = _fit(model, data, workdir, loop=loop, optimizer=LOUD)  # a stopped run stays stopped
        _assert_same(run.state, again.state)
        assert again.resumed_from == stop["step"]


def test_reduce_on_plateau_lowers_the_learning_rate(model, data):
    stopping = Stopping(reduce_patience=0, reduce_factor=0.5)  # every evaluation without improvement halves it
    run = _fit(model, data, loop=Loop(steps=16, batch_size=8, eval_every=2, stopping=stopping), optimizer=LOUD)
    evals = [r["loss"] for r in run.history if r["split"] == "eval"]
    # The rates rebuilt from the evaluations: one that does not improve halves the rate from the next step on.
    scale, best, rates = 1.0, np.inf, {}
    for step in range(1, 17):
        rates[step] = 2.0 * scale
        if step % 2 == 0:
            loss = evals[step // 2 - 1]
            if loss < best:
                best = loss
            else:
                scale *= 0.5
    assert {r["step"]: r["lr"] for r in run.history if r["split"] == "train"} == pytest.approx(rates)
    assert float(run.state.lr_scale) == pytest.approx(scale) and scale < 1


def test_stopping_needs_eval_data_and_a_metric_it_reports(model, data):
    module, variables = model
    with pytest.raises(ConfigError, match="give eval_data"):
        fit(module, variables, data[0], optimizer=SGD, loop=Loop(steps=2, stopping=Stopping(patience=1)))
    with pytest.raises(ConfigError, match="top-5 of 5 classes is always 1"):
        _fit(model, data, loop=Loop(steps=2, stopping=Stopping(metric="top5", patience=1)))
    with pytest.raises(ConfigError, match="Stopping needs patience"):
        Stopping()


# --- exact resume: a crash past the last checkpoint -------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_exactly_with_every_option(model, data, tmp_path):
    # Checkpoints every 2 batches, 3 batches per optimizer step: the checkpoint of step 8 is mid-accumulation,
    # with the average, the plateau trackers and the learning-rate scale in it; the crash at 9 loses step 9.
    stopping = Stopping(patience=4, reduce_patience=0, reduce_factor=0.5)
    loop = Loop(steps=18, batch_size=8, eval_every=4, accumulate=3, ema=EMA(0.8, every=1), stopping=stopping)
    kw = dict(loop=loop, optimizer=LOUD, loss=CrossEntropy(0.1, mixing=Mixing(0.2)))
    straight = _fit(model, data, tmp_path / "straight", **kw)

    def crash(step, _m):
        if step == 9:
            raise Crash

    with pytest.raises(Crash):
        _fit(model, data, tmp_path / "w", callbacks=(crash,), **kw)
    resumed = _fit(model, data, tmp_path / "w", **kw)
    assert resumed.resumed_from == 8
    _assert_same(straight.state, resumed.state)
    assert straight.state.ema is not None and float(straight.state.lr_scale) < 1  # the options were on

    def records(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(ln).items() if k != "images_per_s"} for ln in lines]

    assert records(tmp_path / "w") == records(tmp_path / "straight")
    got, want = read_scalars(tmp_path / "w" / "tensorboard"), read_scalars(tmp_path / "straight" / "tensorboard")
    assert got.keys() == want.keys()
    for tag in ("train/loss", "train/lr", "eval/loss", "eval_ema/top1"):
        assert got[tag] == want[tag], tag


# --- TensorBoard ------------------------------------------------------------------------------------------------


def test_tensorboard_beside_the_metrics_and_off_with_one_option(model, data, tmp_path):
    run = _fit(model, data, tmp_path / "on", loop=Loop(steps=4, batch_size=8, eval_every=2, ema=EMA(0.5)))
    scalars = read_scalars(tmp_path / "on" / "tensorboard")
    train = [r for r in run.history if r["split"] == "train"]
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in train]
    for tag in ("train/lr", "train/grad_norm", "train/images_per_s", "train/top1", "eval/top1", "eval_ema/loss"):
        assert tag in scalars, tag
    ((step, picture),) = read_images(tmp_path / "on" / "tensorboard")["inputs"]
    assert step == 4 and picture.dtype == np.uint8 and picture.shape[0] == 16  # one row of 16-pixel inputs
    module, variables = model
    fit(
        module,
        variables,
        data[0],
        optimizer=SGD,
        loop=Loop(steps=2, batch_size=8),
        checkpoints=Checkpoints(tmp_path / "off", tensorboard=False),
        progress=False,
    )
    assert not (tmp_path / "off" / "tensorboard").exists() and (tmp_path / "off" / "metrics.jsonl").exists()


# --- class weights in evaluation ---------------------------------------------------------------------------------


def test_weighted_evaluation_divides_by_the_weight_sum(model, data):
    module, variables = model
    held = data[1]
    weights = (1.0, 3.0, 0.5, 2.0, 1.0)
    got = evaluate_variables(module, variables, held, 8, loss=CrossEntropy(0.1, weights))
    logits = np.asarray(module.apply(variables, held.images, train=False), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.full(logits.shape, 0.1 / 5) + 0.9 * np.eye(5)[held.labels]
    w = np.asarray(weights)
    want = -(w[None, :] * target * logp).sum() / w[held.labels].sum()
    assert got["loss"] == pytest.approx(want, rel=1e-5)


# --- one meaning: finetune's config and fit's arguments train the same model ----------------------------------------


def test_finetune_options_train_what_fit_trains(model, data):
    from jaxtl.recipes import FinetuneConfig, Split, finetune
    from jaxtl.train import balanced_class_weights
    from jaxtl.train.config import Regularization

    train = data[0]
    loop = Loop(steps=4, batch_size=8, accumulate=2, ema=EMA(0.9))
    config = FinetuneConfig(
        mode="full",
        optimizer=SGD,
        loop=loop,
        split=Split(test_fraction=0),
        regularization=Regularization(0.1, "balanced", mixup_alpha=0.2, cutmix_alpha=1.0),
    )
    recipe = finetune(config, model, train, progress=False)
    loss = CrossEntropy(0.1, balanced_class_weights(train.labels, 5), Mixing(0.2, 1.0))
    direct = _fit(model, data, loop=loop, loss=loss, groups=ParamGroups.finetune("fc", 1.0))
    _assert_same(recipe.state, direct.state)
    assert recipe.state.ema is not None and recipe.metrics == {}  # nothing held out


def test_layer_decay_on_a_module_of_ones_own_names_the_option(model, data):
    """A module that is no jaxtl family has no layers to decay by: a one-line config error, not an attribute error."""
    from jaxtl.errors import ConfigError
    from jaxtl.recipes import FinetuneConfig, Split, finetune

    config = FinetuneConfig(
        mode="full", optimizer=SGD, layer_decay=0.7, loop=Loop(steps=1, batch_size=8), split=Split(test_fraction=0)
    )
    with pytest.raises(ConfigError, match=r"layer_decay needs a jaxtl model.*Tiny") as err:
        finetune(config, model, data[0], progress=False)
    assert err.value.field == "layer_decay"
