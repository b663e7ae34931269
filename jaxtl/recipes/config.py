"""The recipes' configs: frozen, self-validating, handed down whole (as the Flax ImageNet example hands ``config``
to ``train_and_evaluate``). A bad value or a forbidden combination raises :class:`~jaxtl.errors.ConfigError`
naming the field when the config is built; each rule lives here once. A config gives the identity of the run it
describes (:meth:`FinetuneConfig.identity`): the fields that decide the numbers, recorded in ``run.json``.

    config = FinetuneConfig(mode="frozen", optimizer=Optimizer(lr=1e-3), loop=Loop(epochs=5, batch_size=32))
    result = jaxtl.finetune(config, model, "folder:my_images/", workdir="runs/ft")
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtl.errors import ConfigError
from jaxtl.train.config import Loop, Optimizer, Regularization, check_choice, check_number

__all__ = [
    "AUGMENT_CHOICES",
    "MODES",
    "ConvertConfig",
    "EvaluateConfig",
    "FinetuneConfig",
    "Input",
    "PretrainConfig",
    "Regularization",
    "Split",
    "WORDS",
    "parse_denoise",
]

MODES = ("frozen", "full", "linear_probe")
AUGMENT_CHOICES = ("none", "auto", "rrc", "flip", "crop-flip")
DTYPES = ("float32", "bfloat16")

# Identity fields in plain words, for "the work directory holds another run: the learning rate changed (...)".
WORDS = {
    "mode": "what is frozen (mode)",
    "arch": "the architecture",
    "optimizer.name": "the optimizer",
    "optimizer.lr": "the learning rate",
    "optimizer.momentum": "the momentum",
    "optimizer.nesterov": "Nesterov momentum",
    "optimizer.weight_decay": "the weight decay",
    "optimizer.warmup_steps": "the warm-up steps",
    "optimizer.schedule": "the learning-rate schedule",
    "optimizer.clip_norm": "the gradient clipping",
    "optimizer.total_steps": "the run length (the cosine schedule spans it)",
    "loop.batch_size": "the batch size",
    "loop.seed": "the seed",
    "input.image_size": "the image size",
    "input.resize_size": "the resize size",
    "input.augment": "the augmentation",
    "split.test_fraction": "the held-out fraction",
    "split.labels_per_class": "the labels per class",
    "backbone_lr_scale": "the backbone's learning-rate scale",
    "layer_decay": "the layer-wise learning-rate decay",
    "dtype": "the compute dtype",
    "feature_cache": "the feature cache",
    "label_smoothing": "the label smoothing",
    "class_weights": "the class weights",
    "mixup_alpha": "the mixup alpha",
    "cutmix_alpha": "the cutmix alpha",
    "loop.accumulate": "the gradient accumulation",
    "loop.ema": "the weight EMA",
    "loop.stopping": "early stopping / reduce-on-plateau",
    "denoise": "the denoising",
    "channels": "the channels",
    "decoder_widths": "the decoder widths",
    "data": "the training data (its files or contents)",
    "num_examples": "the number of training examples",
    "init": "the starting weights",
    "classes": "the classes",
}


@dataclasses.dataclass(frozen=True)
class Input:
    """How images are read and prepared. ``image_size``: the crop size (default: the model card's);
    ``resize_size``: the evaluation Resize of the shorter side before the crop (default: the card's ratio);
    ``workers``: decoding processes for streamed data (default: from the cores); ``augment``: ``"none"``,
    ``"rrc"`` (RandomResizedCrop + flip, streamed data), ``"flip"`` (streamed data), ``"crop-flip"`` (random crop by
    1/8 of the side + flip on the device, in-memory data) or ``"auto"`` (``rrc`` for streamed, ``crop-flip`` for
    in-memory data). Evaluation and held-out data are never augmented."""

    image_size: int | None = None
    resize_size: int | None = None
    workers: int | None = None
    augment: str = "none"

    def __post_init__(self) -> None:
        check_number(self.image_size, "image_size", low=1, integer=True, none_ok=True)
        check_number(self.resize_size, "resize_size", low=1, integer=True, none_ok=True)
        check_number(self.workers, "workers", low=0, integer=True, none_ok=True)
        check_choice(self.augment, "augment", AUGMENT_CHOICES)
        if self.image_size is not None and self.resize_size is not None and self.resize_size < self.image_size:
            raise ConfigError(
                f"resize_size={self.resize_size} is smaller than image_size={self.image_size}", "resize_size"
            )

    def identity(self) -> dict[str, Any]:
        return {
            "input.image_size": self.image_size,
            "input.resize_size": self.resize_size,
            "input.augment": self.augment,
        }


@dataclasses.dataclass(frozen=True)
class Split:
    """The held-out split: a stratified ``test_fraction`` of the data (drawn from the loop's seed) is never trained
    on and evaluated at the end (``0``: train on everything, nothing held out); ``labels_per_class`` keeps only
    that many labeled examples of each class for training (few-label fine-tuning)."""

    test_fraction: float = 0.2
    labels_per_class: int | None = None

    def __post_init__(self) -> None:
        check_number(self.test_fraction, "test_fraction", low=0)
        if not self.test_fraction < 1:
            raise ConfigError(f"test_fraction must lie in [0, 1), got {self.test_fraction}", "test_fraction")
        check_number(self.labels_per_class, "labels_per_class", low=1, integer=True, none_ok=True)

    def identity(self) -> dict[str, Any]:
        return {"split.test_fraction": self.test_fraction, "split.labels_per_class": self.labels_per_class}


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning a pretrained backbone into a classifier of the data's classes (``jaxtl.finetune``,
    ``jaxtl finetune``).

    ``mode``: ``"frozen"`` trains a new head with the backbone frozen (eval-mode BatchNorm, no backward through it;
    without augmentation its features are computed once, ``feature_cache=False`` runs the backbone every step);
    ``"linear_probe"`` is that head trained on features computed once (it cannot augment); ``"full"`` trains
    everything, the backbone at ``lr * backbone_lr_scale``, or with ``layer_decay=d`` each layer at ``d`` times the
    rate of the one above it (layer-wise learning-rate decay, the head at ``lr``). A full fine-tune takes weight decay
    off norms, biases and embeddings where the family's recipe does (ViT, ConvNeXt; a ResNet decays every
    parameter, as torchvision's recipe). ``dtype``: ``"float32"`` or ``"bfloat16"`` compute
    (default: the model card's). ``regularization`` (:class:`Regularization`): label smoothing, class weights,
    mixup/cutmix. ``loop`` also holds gradient accumulation, the weight EMA (its classifier is saved beside the
    model's, as ``classifier_ema``) and early stopping / reduce-on-plateau (on the held-out split's metric, so
    ``split.test_fraction`` must be > 0; the held-out numbers then chose the stopping point).

    The features are cached only for what a fixed head input allows: mixup/cutmix, the EMA, accumulation and early
    stopping train with the backbone running every step (``mode="frozen"`` does so by itself; ``linear_probe`` and
    ``feature_cache=True`` refuse them).
    """

    mode: str = "frozen"
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    loop: Loop = dataclasses.field(default_factory=lambda: Loop(epochs=5))
    input: Input = dataclasses.field(default_factory=Input)
    split: Split = dataclasses.field(default_factory=Split)
    backbone_lr_scale: float = 1.0
    layer_decay: float | None = None
    dtype: str | None = None
    feature_cache: bool | None = None
    regularization: Regularization = dataclasses.field(default_factory=Regularization)

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", MODES)
        if self.layer_decay is not None:
            check_number(self.layer_decay, "layer_decay", low=0, low_open=True)
            if self.layer_decay > 1 or self.mode != "full" or self.backbone_lr_scale != 1.0:
                raise ConfigError(
                    f"layer_decay={self.layer_decay} needs 0 < layer_decay <= 1, mode='full' and no "
                    "backbone_lr_scale (it sets every layer's rate itself)",
                    "layer_decay",
                )
        _check_types(self, optimizer=Optimizer, loop=Loop, input=Input, split=Split, regularization=Regularization)
        if self.loop.epochs is None and self.loop.steps is None:
            raise ConfigError("give the run's length: loop=Loop(epochs=N) or Loop(steps=N)", "epochs")
        check_number(self.backbone_lr_scale, "backbone_lr_scale", low=0, low_open=True)
        if self.backbone_lr_scale != 1.0 and self.mode != "full":
            raise ConfigError(
                f"backbone_lr_scale applies to mode='full' (the backbone trains), not mode={self.mode!r}",
                "backbone_lr_scale",
            )
        if self.dtype is not None:
            check_choice(self.dtype, "dtype", DTYPES)
        if self.feature_cache not in (None, True, False):
            raise ConfigError(f"feature_cache must be None, True or False; got {self.feature_cache!r}", "feature_cache")
        self._check_per_step_options()
        if self.mode == "linear_probe" and self.input.augment != "none":
            raise ConfigError(
                f"mode='linear_probe' computes features once and cannot augment (augment={self.input.augment!r}); "
                "use mode='frozen' to train a head on augmented images",
                "augment",
            )
        if self.feature_cache and (self.mode == "full" or self.input.augment != "none"):
            raise ConfigError(
                "feature_cache=True needs mode='frozen' or 'linear_probe' without augmentation", "feature_cache"
            )

    def _per_step_options(self) -> list[tuple[str, str]]:
        """``(field, phrase)`` of each option on that needs the backbone every step (images, or a state that
        checkpoints per step)."""
        r, loop = self.regularization, self.loop
        on = []
        if r.mixup_alpha or r.cutmix_alpha:
            field = "mixup_alpha" if r.mixup_alpha else "cutmix_alpha"
            on.append((field, f"mixup/cutmix ({field}={getattr(r, field):g})"))
        if loop.ema is not None:
            on.append(("ema", f"the weight EMA (ema={loop.ema.decay:g})"))
        if loop.accumulate != 1:
            on.append(("accumulate", f"gradient accumulation (accumulate={loop.accumulate})"))
        if loop.stopping is not None:
            on.append(("stopping", "early stopping / reduce-on-plateau"))
        return on

    def _check_per_step_options(self) -> None:
        on = self._per_step_options()
        if on and self.mode == "linear_probe":
            field, phrase = on[0]
            raise ConfigError(
                f"mode='linear_probe' trains a head on features computed once, without {phrase}; use mode='frozen' "
                "(the backbone then runs every step)",
                field,
            )
        if on and self.feature_cache:
            field, phrase = on[0]
            raise ConfigError(f"feature_cache=True cannot train with {phrase}: the backbone must run every step", field)
        if self.loop.stopping is not None and self.split.test_fraction == 0:
            raise ConfigError(
                "early stopping / reduce-on-plateau watch the held-out split's metric: test_fraction must be > 0",
                "test_fraction",
            )

    @property
    def cached_features(self) -> bool:
        """Whether the backbone's features are computed once and the head trained on them."""
        if self._per_step_options():
            return False
        frozen_plain = self.mode == "frozen" and self.input.augment == "none" and self.feature_cache is not False
        return self.mode == "linear_probe" or frozen_plain

    def identity(self, total_steps: int) -> dict[str, Any]:
        """The fields that decide the numbers (workers, parallel and prefetch do not)."""
        return {
            "mode": self.mode,
            **self.optimizer.identity(self.loop.optimizer_steps(total_steps)),
            **self.loop.identity(),
            **self.input.identity(),
            **self.split.identity(),
            "backbone_lr_scale": self.backbone_lr_scale,
            "dtype": self.dtype,
            "feature_cache": self.cached_features,
            **self.regularization.identity(),
            **({"layer_decay": self.layer_decay} if self.layer_decay is not None else {}),
        }


def parse_denoise(denoise: Any) -> tuple[Any, ...] | None:
    """``None``, ``("noise", std)``, ``("mask", ratio, patch)``, or the CLI strings ``"noise:0.2"`` /
    ``"mask:0.5"`` / ``"mask:0.5:4"`` (patch defaults to 4) -> the tuple form; ConfigError naming the spec."""
    if denoise is None:
        return None
    bad = ConfigError(f"denoise {denoise!r}: expected noise:STD, mask:RATIO or mask:RATIO:PATCH", "denoise")
    if isinstance(denoise, str):
        parts = denoise.split(":")
        try:
            nums = [float(p) for p in parts[1:]]
        except ValueError:
            raise bad from None
        if parts[0] == "noise" and len(nums) == 1:
            denoise = ("noise", nums[0])
        elif parts[0] == "mask" and len(nums) in (1, 2) and (len(nums) == 1 or nums[1] == int(nums[1])):
            denoise = ("mask", nums[0], int(nums[1]) if len(nums) == 2 else 4)
        else:
            raise bad
    kind = denoise[0] if isinstance(denoise, (tuple, list)) and denoise else None
    if kind == "noise" and len(denoise) == 2:
        if not 0 < float(denoise[1]) < float("inf"):
            raise ConfigError(f"denoise noise std must be a finite number > 0, got {denoise[1]}", "denoise")
        return ("noise", float(denoise[1]))
    if kind == "mask" and len(denoise) == 3:
        if not 0.0 < float(denoise[1]) < 1.0 or int(denoise[2]) < 1:
            raise ConfigError(f"denoise mask needs 0 < ratio < 1 and patch >= 1, got {tuple(denoise)}", "denoise")
        return ("mask", float(denoise[1]), int(denoise[2]))
    raise bad


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pretraining ``arch``'s backbone as the encoder of a (denoising) autoencoder on unlabeled images
    (``jaxtl.pretrain``, ``jaxtl pretrain``). ``denoise``: ``None``, ``"noise:STD"`` / ``("noise", std)`` or
    ``"mask:RATIO[:PATCH]"`` / ``("mask", ratio, patch)`` corrupts only the input (the target stays clean).
    ``split.test_fraction`` leaves out the stratified held-out part a later fine-tune with the same fraction and
    seed evaluates on, so pretraining never sees those images (labeled data only; 0: pretrain on everything)."""

    arch: str = "convnet_small"
    channels: int = 3
    denoise: Any = None
    decoder_widths: tuple[int, ...] | None = None
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    loop: Loop = dataclasses.field(default_factory=lambda: Loop(epochs=5))
    input: Input = dataclasses.field(default_factory=Input)
    split: Split = dataclasses.field(default_factory=lambda: Split(test_fraction=0.0))

    def __post_init__(self) -> None:
        from jaxtl.models.registry import get_spec

        try:
            get_spec(self.arch)
        except KeyError as e:
            raise ConfigError(str(e.args[0] if e.args else e), "arch") from None
        check_choice(self.channels, "channels", (1, 3))
        object.__setattr__(self, "denoise", parse_denoise(self.denoise))
        if self.decoder_widths is not None:
            widths = tuple(self.decoder_widths)
            if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
                raise ConfigError(
                    f"decoder_widths must be positive integers, got {self.decoder_widths!r}", "decoder_widths"
                )
            object.__setattr__(self, "decoder_widths", widths)
        _check_types(self, optimizer=Optimizer, loop=Loop, input=Input, split=Split)
        if self.loop.epochs is None and self.loop.steps is None:
            raise ConfigError("give the run's length: loop=Loop(epochs=N) or Loop(steps=N)", "epochs")
        if self.input.augment != "none":
            raise ConfigError("pretraining does not augment (denoise corrupts its input instead)", "augment")
        if self.split.labels_per_class is not None:
            raise ConfigError(
                "labels_per_class is a fine-tuning option; pretraining ignores labels", "labels_per_class"
            )
        if self.loop.ema is not None:
            raise ConfigError("the weight EMA is a fine-tuning option; pretraining saves the encoder it trains", "ema")
        if self.loop.stopping is not None:
            raise ConfigError(
                "early stopping / reduce-on-plateau watch a held-out metric; pretraining evaluates none", "stopping"
            )

    def identity(self, total_steps: int) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "channels": self.channels,
            "denoise": list(self.denoise) if self.denoise else None,
            "decoder_widths": list(self.decoder_widths) if self.decoder_widths else None,
            **self.optimizer.identity(self.loop.optimizer_steps(total_steps)),
            **self.loop.identity(),
            **self.input.identity(),
            "split.test_fraction": self.split.test_fraction,
        }


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Evaluating a classifier (``jaxtl.evaluate``, ``jaxtl evaluate``): ``split`` ``"all"`` examples of the data,
    or ``"test"``, the held-out examples its fine-tuning recorded (refused when the data does not hold them);
    ``batch_size``; ``input`` (image size, resize, workers; never augmented); ``parallel`` as in :class:`Loop`
    (``"none"``: one device). ``report``: also the per-class report (precision, recall, F1 and support per class,
    the confusion matrix and its picture, the ``worst`` worst-classified examples with their file names)."""

    split: str = "all"
    batch_size: int = 256
    input: Input = dataclasses.field(default_factory=Input)
    parallel: str = "none"
    report: bool = False
    worst: int = 20

    def __post_init__(self) -> None:
        check_choice(self.split, "split", ("all", "test"))
        check_number(self.batch_size, "batch_size", low=1, integer=True)
        if not isinstance(self.report, bool):
            raise ConfigError(f"report must be True or False, got {self.report!r}", "report")
        check_number(self.worst, "worst", low=0, integer=True)
        _check_types(self, input=Input)
        if self.input.augment != "none":
            raise ConfigError("evaluation never augments", "augment")
        Loop(parallel=self.parallel)  # the same choices


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Converting torchvision weights (``jaxtl.convert``, ``jaxtl convert``): ``arch`` (default: inferred from the
    keys and shapes), ``num_classes`` (None: keep the checkpoint's head; 0: drop it; N: a new head of N classes from
    ``seed``), ``prefix``/``entry`` to locate the model inside a training checkpoint (default: detected), and
    ``safetensors``: also write the variables as a Flax-layout ``.safetensors`` at that path."""

    arch: str | None = None
    num_classes: int | None = None
    seed: int = 0
    prefix: str | None = None
    entry: str | None = None
    safetensors: str | None = None

    def __post_init__(self) -> None:
        check_number(self.num_classes, "num_classes", low=0, integer=True, none_ok=True)
        check_number(self.seed, "seed", low=0, integer=True)
        if self.arch is not None:
            from jaxtl.models.registry import get_spec

            try:
                get_spec(self.arch)
            except KeyError as e:
                raise ConfigError(str(e.args[0] if e.args else e), "arch") from None


def _check_types(config: Any, **kinds: type) -> None:
    for name, kind in kinds.items():
        value = getattr(config, name)
        if not isinstance(value, kind):
            raise ConfigError(f"{name} must be a {kind.__name__}(...), got {type(value).__name__}", name)
