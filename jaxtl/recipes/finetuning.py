"""Fine-tuning, the whole run (what ``jaxtl finetune`` does): a held-out split, the head rule, training in the
config's mode, evaluation on the held-out part, and with a work directory the classifier saved with its card and
its held-out record (and the weight average's, as ``classifier_ema``, when the loop keeps one). Every mode goes
through the same run lifecycle (:class:`~jaxtl.lifecycle.Run`): the cached-feature path keeps the same promises as
the per-step one, TensorBoard event files included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.compile_cache import default_compile_cache
from jaxtl.data.augment import random_crop_flip
from jaxtl.data.batching import run_length
from jaxtl.data.image_source import ImageSource
from jaxtl.data.protocol import Source
from jaxtl.errors import ConfigError
from jaxtl.lifecycle import Run
from jaxtl.models.card import ModelCard
from jaxtl.models.protocol import Classifier
from jaxtl.models.registry import at_image_size
from jaxtl.recipes.config import WORDS, FinetuneConfig
from jaxtl.recipes.data import open_data, resolve_augment, split_for_training, write_heldout
from jaxtl.recipes.evaluation import evaluate_classifier
from jaxtl.recipes.model import ModelLike, as_model, classifier_for, variables_digest
from jaxtl.train.config import Checkpoints, fit_batch
from jaxtl.train.evaluation import prepare_evaluation
from jaxtl.train.fit import OnStep, fit
from jaxtl.train.groups import ParamGroups
from jaxtl.train.losses import CrossEntropy, imbalance_warning
from jaxtl.train.model_files import write_variables
from jaxtl.train.parallel import Parallel
from jaxtl.train.probe import extract_features, fit_linear_probe
from jaxtl.train.result import RunResult
from jaxtl.train.run_log import METRICS, TENSORBOARD, RunLog, kept_records
from jaxtl.train.timings import phase

__all__ = ["finetune"]

WRITES = ("checkpoints", METRICS, TENSORBOARD, "classifier", "classifier_ema", "features.npy")
SAMPLE_IMAGES = 8  # training inputs shown in TensorBoard
FEATURES_IN_MEMORY = 1 << 30  # cached features beyond 1 GiB go to a memory-mapped .npy file
EVAL_BATCH = 256  # evaluate_classifier's default batch


def crop_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """``augment="crop-flip"`` on the device: shifts by up to 1/8 of the side (zero padding) and mirroring."""
    pad = max(1, min(images.shape[1], images.shape[2]) // 8)
    return random_crop_flip(rng, images, padding=pad, flip=True)


@dataclasses.dataclass
class _Plan:
    """What one fine-tuning run does, settled before any work."""

    config: FinetuneConfig
    module: nn.Module
    variables: dict[str, Any]
    card: ModelCard | None
    train: Source
    test: Source | None
    heldout: dict[str, Any]
    batch_size: int
    total: int
    on_device: bool
    data_name: str
    loss: CrossEntropy


def _start_workers(config: FinetuneConfig, train: Source, batch: int, par: Parallel) -> None:
    """Start the training data's workers and first batches now, for the pass the run takes first (the feature pass,
    or the first epoch), so they get going while the head is built and the step compiles."""
    if not isinstance(train, ImageSource):
        return
    where = {"process_index": par.process_index, "process_count": par.process_count}
    if config.cached_features:
        batch = -(-batch // par.num_devices) * par.num_devices  # as extract_features pads it
        train.prepare(batch, shuffle=False, drop_remainder=False, train=False, **where)
    else:
        train.prepare(batch, seed=config.loop.seed, epoch=0, train=True, **where)


def _plan(config: FinetuneConfig, model: ModelLike, data: str | Source, fresh: bool) -> tuple[_Plan, dict[str, Any]]:
    """``fresh``: the run starts at step 0 (no checkpoint to resume), so its data workers may start right away."""
    module, variables, card = as_model(model)
    if isinstance(data, str) and card is None:
        raise ConfigError("a data spec needs the model card to prepare images: pass (module, variables, card)", "model")
    with phase("data: list and split"):
        if card is not None:
            source = open_data(data, card, config.input)
        else:
            assert not isinstance(data, str)
            source = data
        _, on_device = resolve_augment(config.input.augment, source)
        # A transformer is built for one input size: rebuilt for the data's, its position embedding interpolated.
        module, variables = at_image_size(module, variables, source.image_shape[0])
        train, test, heldout = split_for_training(source, config.split, config.loop.seed)
    par = Parallel(config.loop.parallel)
    batch = fit_batch(config.loop.batch_size, len(train), par.num_devices)
    _, total = run_length(len(train), batch, config.loop.epochs, config.loop.steps)
    config.loop.check_length(total)  # before the run opens: a refused length must not leave a recorded run
    if fresh:
        _start_workers(config, train, batch, par)
    with phase("model: new head"):
        clf, clf_vars, _ = classifier_for(
            module, variables, card, tuple(source.class_names or ()), source.num_classes, config.loop.seed
        )
    dtype = config.dtype or (card.dtype if card is not None else None)
    if dtype == "bfloat16":
        clf = clf.clone(dtype=jnp.bfloat16)
    labels = np.asarray(train.labels)
    loss = config.regularization.loss(labels, train.num_classes)
    if config.regularization.class_weights is None:
        imbalance = imbalance_warning(labels, train.num_classes, tuple(train.class_names or ()))
        if imbalance is not None:
            warnings.warn(imbalance, stacklevel=3)
    identity = {
        **config.identity(total),
        "data": source.digest(),
        "num_examples": len(train),
        "init": variables_digest(variables),
        "classes": list(source.class_names or ()),
    }
    if card is not None:
        identity["arch"] = card.arch
    name = data if isinstance(data, str) else repr(data)
    plan = _Plan(config, clf, clf_vars, card, train, test, heldout, batch, total, on_device, name, loss)
    return plan, identity


@contextlib.contextmanager
def _feature_file(module: nn.Module, n: int, run: Run | None) -> Iterator[pathlib.Path | None]:
    """Where a large feature cache is memory-mapped (``workdir/features.npy`` or a temporary file, removed after),
    or None when ``n`` examples' features fit comfortably in memory."""
    if n * int(module.num_features) * 4 <= FEATURES_IN_MEMORY:
        yield None
        return
    if run is not None:
        yield run.workdir / "features.npy"
        return
    with tempfile.TemporaryDirectory(prefix="jaxtl-features-") as tmp:
        yield pathlib.Path(tmp) / "features.npy"


class _Watched:
    """A Source whose batches stop cleanly when the run receives SIGINT/SIGTERM (nothing to save mid-extraction)."""

    def __init__(self, source: Source, run: Run):
        self._source, self._run = source, run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def __len__(self) -> int:
        return len(self._source)

    def batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._run.watch(self._source.batches(*args, **kwargs), "feature extraction")


def _train_cached(
    p: _Plan, run: Run | None, progress: bool, callbacks: Sequence[OnStep], tensorboard: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    c = p.config
    if c.mode == "frozen" and progress and jax.process_index() == 0:
        print(
            "finetune: frozen backbone without augmentation -> its features are computed once and the head is "
            "trained on them (feature_cache=False to run the backbone every step)",
            file=sys.stderr,
        )
    train = p.train if run is None else _Watched(p.train, run)  # SIGINT/SIGTERM stop between batches
    with _feature_file(p.module, len(p.train), run) as out_path:
        feats = extract_features(
            p.module,
            p.variables,
            train,
            batch_size=p.batch_size,
            parallel=c.loop.parallel,
            out_path=out_path,
            progress=progress,
        )
        probe = fit_linear_probe(
            feats,
            np.asarray(p.train.labels),
            p.train.num_classes,
            c.optimizer.build(p.total),
            variables=p.variables,
            classifier=p.module,
            steps=p.total,
            batch_size=p.batch_size,
            seed=c.loop.seed,
            loss=p.loss,
        )
    assert probe.variables is not None
    for rec in probe.history:
        for cb in callbacks:
            cb(int(rec["step"]), rec)
    return jax.device_put(probe.variables), _log_cached(p, run, probe.history, tensorboard)


def _log_cached(p: _Plan, run: Run | None, steps: list[dict[str, Any]], tensorboard: bool) -> list[dict[str, Any]]:
    """The cached-feature path's records, written as ``fit`` writes them: ``metrics.jsonl`` and TensorBoard (with
    the learning rate of each step and, at the end, a few training inputs)."""
    rates = p.config.optimizer.schedule_fn(p.total)(np.arange(p.total))
    lr = np.broadcast_to(np.asarray(rates, np.float64), (p.total,))  # a constant schedule gives one number
    main = run is None or run.main
    if run is not None:
        kept_records(run.workdir / METRICS, 0, main)  # a rerun starts the log afresh
    log = RunLog(None if run is None else run.workdir, [], tensorboard=tensorboard, main=main)
    try:
        for rec in steps:
            log.log({"step": rec["step"], "split": "train", **rec, "lr": float(lr[int(rec["step"]) - 1])})
        if log.tensorboard:
            batch = next(iter(p.train.batches(min(SAMPLE_IMAGES, len(p.train)), seed=p.config.loop.seed)))
            log.images("inputs", batch["images"], p.total)
    finally:
        log.close()
    return log.history


class _EvaluationAhead:
    """A step callback that, once training runs, compiles the held-out evaluation in the background (what
    :func:`~jaxtl.recipes.evaluation.evaluate_classifier` runs with its default batch), so it is built by the end."""

    def __init__(self, p: _Plan) -> None:
        self.plan, self.started = p, False

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.started or self.plan.test is None:
            return
        self.started = True
        test = self.plan.test
        prepare_evaluation(self.plan.module, self.plan.variables, test, max(1, min(EVAL_BATCH, len(test))))


def _groups(c: FinetuneConfig, module: nn.Module) -> ParamGroups:
    """What trains, by the config and the family's own rules (its head path, its no-decay parameters)."""
    if c.mode == "frozen":
        return ParamGroups.head_only(module)
    family = module if isinstance(module, Classifier) else None  # a module of the user's own: its head at "fc"
    no_decay = family is not None and not family.decay_norms
    if c.layer_decay is not None:
        if family is None:
            raise ConfigError(
                f"layer_decay needs a jaxtl model (its layers are the family's layer_patterns); "
                f"{type(module).__name__} does not declare them",
                "layer_decay",
            )
        return ParamGroups.layer_decay(family, c.layer_decay, no_decay=no_decay)
    return ParamGroups.finetune(module, c.backbone_lr_scale, no_decay=no_decay)


def _train_steps(
    p: _Plan, run: Run | None, progress: bool, callbacks: Sequence[OnStep], tensorboard: bool
) -> RunResult:
    c = p.config
    groups = _groups(c, p.module)
    loop = dataclasses.replace(c.loop, batch_size=p.batch_size, epochs=None, steps=p.total)
    return fit(
        p.module,
        p.variables,
        p.train,
        optimizer=c.optimizer,
        groups=groups,
        loop=loop,
        checkpoints=None if run is None else Checkpoints(run, tensorboard=tensorboard),
        loss=p.loss,
        augment=crop_flip if p.on_device else None,
        eval_data=p.test if c.loop.stopping is not None else None,  # early stopping watches the held-out split
        callbacks=(*callbacks, _EvaluationAhead(p)),
        progress=progress,
    )


def _classifier_card(p: _Plan, metrics: dict[str, float], ema: bool = False) -> ModelCard | None:
    if p.card is None:
        return None
    c, card, train = p.config, p.card, p.train
    size = train.image_shape[0]
    pre = card.preprocessing if size == card.preprocessing.crop_size else card.preprocessing.with_size(size)
    split = {"test_fraction": c.split.test_fraction, "seed": c.loop.seed, "labels_per_class": c.split.labels_per_class}
    return card.replace(
        num_classes=train.num_classes,
        class_names=tuple(train.class_names or ()),
        kind="classifier",
        dtype=c.dtype or card.dtype,
        preprocessing=pre,
        extra={
            **{k: v for k, v in card.extra.items() if k not in ("test", "split", "mode")},
            "data": p.data_name,
            "split": split,
            "mode": c.mode,
            "test": metrics,
            **({"ema": dataclasses.asdict(c.loop.ema)} if ema and c.loop.ema is not None else {}),
        },
    )


def _save(run: Run, name: str, variables: dict[str, Any], card: ModelCard | None, heldout: dict[str, Any]) -> None:
    assert card is not None
    with run.output(name) as tmp:
        write_variables(tmp, variables, card)
        write_heldout(tmp, heldout)


def finetune(
    config: FinetuneConfig,
    model: ModelLike,
    data: str | Source,
    *,
    workdir: str | pathlib.Path | None = None,
    progress: bool = True,
    allow_changes: bool = False,
    callbacks: Sequence[OnStep] = (),
    tensorboard: bool = True,
) -> RunResult:
    """Fine-tune ``model`` into a classifier of ``data``'s classes as ``config`` says (what ``jaxtl finetune``
    runs); returns a :class:`~jaxtl.train.result.RunResult` (``.metrics``: held-out top1/top5/loss/n, and the
    weight average's as ``ema_top1``/``ema_top5``/``ema_loss`` when ``config.loop.ema`` keeps one; ``.state``
    holds it: ``result.state.ema_variables``).

    ``model``: ``(module, variables, card)`` as :func:`jaxtl.bridge.pretrained`, :func:`jaxtl.pretrain`,
    :func:`load_variables` or another ``finetune`` give it (``(module, variables)`` with a ready Source as data).
    ``data``: a data spec (``"folder:DIR"``, ``"digits"``, ...; prepared as the card says) or a Source.
    ``workdir``: the run is resumable there (lock, identity, checkpoints, ``metrics.jsonl``, TensorBoard event
    files in ``workdir/tensorboard`` unless ``tensorboard=False``) and the classifier is saved to
    ``workdir/classifier`` with its card and held-out record (the EMA's to ``workdir/classifier_ema``);
    SIGINT/SIGTERM stop it cleanly. ``callbacks``: ``fn(step, train_metrics)`` after every step, in order (as
    :func:`~jaxtl.train.fit` calls them). A training split whose largest class has more than 10x the examples of
    its smallest gets a warning, unless class weights are set.
    """
    if not isinstance(config, FinetuneConfig):
        raise ConfigError(f"config must be a FinetuneConfig, got {type(config).__name__}", "config")
    default_compile_cache()  # on unless configured otherwise or turned off (jaxtl.compile_cache)
    fresh = workdir is None or not (pathlib.Path(workdir) / "checkpoints").exists()
    plan, identity = _plan(config, model, data, fresh)
    if workdir is not None and plan.card is None:
        raise ConfigError("saving a classifier needs the model card: pass (module, variables, card)", "model")
    run = None
    if workdir is not None:
        copies = 3 if config.loop.ema is None else 4  # checkpoint, optimizer state, classifier (+ its average)
        need = copies * sum(np.asarray(x).nbytes for x in jax.tree.leaves(plan.variables)) + 2**20
        run = Run(
            pathlib.Path(workdir),
            identity,
            WORDS,
            WRITES,
            allow_changes=allow_changes,
            need_bytes=need,
            kind="finetune",
        )
    with run if run is not None else contextlib.nullcontext():
        if run is not None:
            run.check_output("classifier")
            if config.loop.ema is not None:
                run.check_output("classifier_ema")
            run.note("heldout", {k: v for k, v in plan.heldout.items() if k != "test"})
        state, resumed = None, 0
        if config.cached_features:
            variables, history = _train_cached(plan, run, progress, callbacks, tensorboard)
        else:
            result = _train_steps(plan, run, progress, callbacks, tensorboard)
            variables, history, state, resumed = result.variables, result.history, result.state, result.resumed_from
        with phase("eval: held-out split"):
            metrics = evaluate_classifier(plan.module, variables, plan.test) if plan.test is not None else {}
        card = _classifier_card(plan, metrics)
        ema = None if state is None or state.ema is None else state.ema_variables
        ema_metrics = evaluate_classifier(plan.module, ema, plan.test) if ema and plan.test is not None else {}
        path = None
        if run is not None and run.main:
            _save(run, "classifier", variables, card, plan.heldout)
            if ema is not None:
                _save(run, "classifier_ema", ema, _classifier_card(plan, ema_metrics, ema=True), plan.heldout)
            path = run.workdir / "classifier"
    metrics = {**metrics, **{f"ema_{k}": v for k, v in ema_metrics.items() if k != "n"}}
    return RunResult(plan.module, variables, card, history, metrics, path, state, resumed, len(plan.train))
