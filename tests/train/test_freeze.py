"""Freezing through parameter groups: labels by regex, zero updates and no optimizer state for frozen leaves, a
frozen backbone that is bit-identical after training (BatchNorm included) and never differentiated, per-group
learning rates, refusal of optimizers that freeze on their own, and the linear-probe fast path."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util
from tiny import Tiny, tiny_dataset, tiny_variables

import jaxtl
from jaxtl.train import (
    Group,
    Loop,
    Parallel,
    ParamGroups,
    TrainState,
    extract_features,
    fit,
    fit_linear_probe,
    train_step,
)


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.fixture(scope="module")
def resnet():
    module = jaxtl.create("resnet18", num_classes=10)
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    return module, jax.device_get(variables)


def test_pattern_matching_nothing_raises(resnet):
    module, variables = resnet
    with pytest.raises(ValueError, match="\\['\\^head/'\\] match no parameter path"):
        TrainState.create(module, variables, optax.sgd(0.1), groups="^head/")
    with pytest.raises(ValueError, match="\\['nope'\\] match no parameter path"):
        ParamGroups.trainable(["^fc/", "nope"]).labels(variables["params"])
    with pytest.raises(ValueError, match="leave no parameter trainable"):
        ParamGroups(groups={"all": Group(frozen=True)}).labels(variables["params"])
    with pytest.raises(ValueError, match="not a valid regex"):
        ParamGroups.trainable("fc/(")
    with pytest.raises(ValueError, match="not defined"):
        ParamGroups(rules=(("^fc/", "head"),))
    with pytest.raises(TypeError, match="not a predicate"):
        ParamGroups.of(lambda path: True)


def test_group_labels_and_opt_state_holds_trainable_leaves_only(resnet):
    module, variables = resnet
    params = variables["params"]
    groups = ParamGroups.trainable(["^fc/", "layer4/1/bn2/"])
    labels = _flat(groups.labels(params))
    trainable = {p for p, g in labels.items() if g == "trainable"}
    assert trainable == {"fc/kernel", "fc/bias", "layer4/1/bn2/scale", "layer4/1/bn2/bias"}
    state = TrainState.create(module, variables, optax.adam(1e-3), groups=groups)
    assert set(state.trainable) == trainable
    shapes = sorted(np.shape(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x))
    trainable_shapes = sorted([(512, 10), (10,), (512,), (512,)] * 2)  # adam's mu and nu
    assert shapes == trainable_shapes


@pytest.fixture(scope="module")
def frozen_run(resnet):
    module, variables = resnet
    rng = np.random.default_rng(0)
    par = Parallel("pmap")
    state = TrainState.create(module, variables, optax.adamw(1e-2, weight_decay=0.1), rng=0, groups="^fc/")
    placed = par.put_state(state)
    step = par.map(train_step)
    for _ in range(5):
        batch = {
            "images": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
            "labels": rng.integers(0, 10, 8).astype(np.int32),
        }
        placed, _ = step(placed, par.put_batch(batch))
    return state, par.get_state(placed)


def test_frozen_backbone_is_bit_identical_after_five_steps(resnet, frozen_run):
    _, variables = resnet
    before, after = frozen_run
    assert before.backbone_frozen
    p0, p1 = _flat(variables["params"]), _flat(after.params)
    for path, value in p0.items():
        if path.startswith("fc/"):
            assert np.abs(p1[path] - value).max() > 1e-3, path
        else:
            np.testing.assert_array_equal(p1[path], value, err_msg=path)
    s0, s1 = _flat(variables["batch_stats"]), _flat(after.batch_stats)
    assert s0.keys() == s1.keys()
    for path, value in s0.items():
        np.testing.assert_array_equal(s1[path], value, err_msg=path)
    opt_shapes = sorted(np.shape(x) for x in jax.tree.leaves(after.opt_state) if np.ndim(x))
    assert opt_shapes == sorted([(512, 10), (10,)] * 2)


def test_naive_optax_masked_moves_the_frozen_backbone():
    """The trap parameter groups avoid: optax.masked passes raw gradients through as updates of masked-out leaves."""
    module = Tiny()
    variables = jax.device_get(tiny_variables(module))
    data = tiny_dataset(8)
    params = variables["params"]
    mask = jax.tree.map(lambda g: g == "trainable", ParamGroups.trainable("^fc/").labels(params))

    def loss(p):
        logits = module.apply({"params": p, "batch_stats": variables["batch_stats"]}, data.images, train=False)
        return jaxtl.train.cross_entropy(logits, data.labels).mean()

    grads = jax.grad(loss)(params)
    for name, tx in [
        ("masked", optax.masked(optax.adamw(1e-2), mask)),
        ("groups", ParamGroups.trainable("^fc/").optimizer(optax.adamw(1e-2), params)),
    ]:
        updates, _ = tx.update(grads, tx.init(params), params)
        moved = np.abs(np.asarray(updates["conv1"]["kernel"])).max()
        if name == "masked":
            assert moved > 0, "optax.masked no longer leaks gradients; the trap test needs a new example"
        else:
            assert moved == 0


def _count_convs(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "conv_general_dilated"
        for v in eqn.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                n += _count_convs(inner)
            elif hasattr(v, "eqns"):
                n += _count_convs(v)
    return n


def test_frozen_step_has_no_backward_convolutions(resnet):
    _, variables = resnet
    module = jaxtl.create("resnet18", num_classes=10, conv_impl="xla")  # every conv a conv_general_dilated
    batch = {"images": np.zeros((2, 64, 64, 3), np.float32), "labels": np.zeros((2,), np.int32)}
    forward = _count_convs(
        jax.make_jaxpr(lambda v, x: module.apply(v, x, train=False))(variables, batch["images"]).jaxpr
    )
    counts = {}
    for trainable in (None, "^fc/"):
        state = TrainState.create(module, variables, optax.sgd(0.1), rng=0, groups=trainable)
        jaxpr = jax.make_jaxpr(lambda s, b: train_step(s, b, axis_name=None))(state, batch).jaxpr
        counts[trainable] = _count_convs(jaxpr)
    assert forward == 20  # resnet18: stem + 16 block convs + 3 downsample convs
    assert counts["^fc/"] == forward
    assert counts[None] >= 2 * forward  # the full step adds input- and kernel-gradient convs


def test_partly_frozen_backbone_keeps_frozen_statistics():
    module = Tiny()
    variables = jax.device_get(tiny_variables(module))
    data = tiny_dataset(8)
    state = TrainState.create(module, variables, optax.sgd(0.1), rng=0, groups="^(bn2|fc)/")
    assert not state.backbone_frozen
    par = Parallel("shard_map")
    new = par.get_state(
        par.map(train_step)(
            par.put_state(state), par.put_batch({"images": data.images, "labels": data.labels.astype(np.int32)})
        )[0]
    )
    for key in ("mean", "var", "num_batches_tracked"):
        np.testing.assert_array_equal(new.batch_stats["bn1"][key], variables["batch_stats"]["bn1"][key])
        assert np.any(new.batch_stats["bn2"][key] != variables["batch_stats"]["bn2"][key])
    np.testing.assert_array_equal(new.params["conv2"]["kernel"], variables["params"]["conv2"]["kernel"])
    assert np.any(new.params["bn2"]["scale"] != variables["params"]["bn2"]["scale"])


def test_linear_probe_matches_frozen_backbone_fit(tmp_path):
    module = Tiny()
    variables = jax.device_get(tiny_variables(module))
    data = tiny_dataset(44)
    tx = optax.adam(5e-2)
    frozen = fit(
        module,
        variables,
        data,
        optimizer=tx,
        groups=ParamGroups.head_only(),
        loop=Loop(steps=10, batch_size=8, parallel="pmap"),
        progress=False,
    )
    feats = extract_features(module, variables, data, batch_size=8, parallel="shard_map", out_path=tmp_path / "f.npy")
    assert isinstance(feats, np.memmap) and feats.shape == (44, 8)
    direct = np.asarray(module.apply(variables, data.images, train=False, return_features=True)["pre_logits"])
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)
    probe = fit_linear_probe(feats, data.labels, 5, tx, variables=variables, steps=10, batch_size=8)
    losses = [h["loss"] for h in probe.history]
    assert losses[-1] < losses[0]
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(probe.head[key], frozen.variables["params"]["fc"][key], rtol=1e-5, atol=1e-6)
        assert np.abs(probe.head[key] - variables["params"]["fc"][key]).max() > 1e-3
    for path, value in _flat(variables["params"]).items():
        if not path.startswith("fc/"):
            np.testing.assert_array_equal(_flat(probe.variables["params"])[path], value)


def test_linear_probe_leaves_the_callers_head_alive():
    # The probe's step donates its head; the caller's (device) arrays must not be the ones donated.
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((16, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    head = {"kernel": jax.numpy.zeros((6, 3)), "bias": jax.numpy.zeros((3,))}
    variables = {"params": {"fc": head}}
    probe = fit_linear_probe(feats, labels, 3, optax.sgd(0.1), variables=variables, steps=3, batch_size=8)
    assert float(np.abs(head["kernel"]).sum()) == 0.0  # still readable, unchanged
    assert float(np.abs(probe.head["kernel"]).sum()) > 0.0


def test_optimizer_that_freezes_on_its_own_is_refused():
    """One meaning of frozen: an optimizer already partitioned with set_to_zero would keep leaves fixed that the
    state's groups call trainable (BatchNorm in train mode, a backward pass through them): refused, naming them."""
    module = Tiny()
    variables = jax.device_get(tiny_variables(module))
    params = variables["params"]
    labels = jax.tree.map(lambda g: "t" if g == "trainable" else "f", ParamGroups.trainable("^fc/").labels(params))
    own = optax.partition({"t": optax.sgd(0.1), "f": optax.set_to_zero()}, labels)
    with pytest.raises(ValueError, match=r"zero updates to trainable parameters \(bn1/bias"):
        TrainState.create(module, variables, own)
    TrainState.create(module, variables, own, groups=ParamGroups.head_only())  # agrees with the groups: fine
    warmup = optax.sgd(optax.linear_schedule(0.0, 0.1, 10))  # every first update is zero: cannot be judged
    TrainState.create(module, variables, warmup)


def test_group_learning_rates_scale_updates():
    module = Tiny()
    variables = jax.device_get(tiny_variables(module))
    data = tiny_dataset(8)
    batch = {"images": data.images, "labels": data.labels.astype(np.int32)}
    moves = {}
    for scale in (1.0, 0.25):
        state = TrainState.create(module, variables, optax.sgd(0.1), groups=ParamGroups.finetune("fc", scale))
        new, _ = train_step(state, batch, axis_name=None)
        moves[scale] = {
            k: np.asarray(new.params[k]["kernel"]) - variables["params"][k]["kernel"] for k in ("conv1", "fc")
        }
    np.testing.assert_allclose(
        moves[0.25]["conv1"], 0.25 * moves[1.0]["conv1"], rtol=1e-4, atol=5e-8
    )  # differences of float32 params
    np.testing.assert_array_equal(moves[0.25]["fc"], moves[1.0]["fc"])
    with pytest.raises(ValueError, match="weight_decay_scale, which needs an optimizer factory"):
        groups = ParamGroups(
            rules=(("^fc/", "h"),), groups={"h": Group(), "b": Group(weight_decay_scale=0.0)}, default="b"
        )
        TrainState.create(module, variables, optax.adamw(0.1, weight_decay=0.1), groups=groups)
