"""Training: TrainState, parameter groups, per-device steps, parallel wrappers, the fit loop and its configs
(gradient accumulation, weight EMA, early stopping), losses (label smoothing, class weights, mixup/cutmix), run
checkpoints and TensorBoard logs, saved models, probes, the per-class report, start-up timings."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxtl.errors import CheckpointDamagedError, CheckpointError
    from jaxtl.lifecycle import RunInterrupted, RunMismatchError, WorkdirError
    from jaxtl.train.config import Checkpoints, Loop, Optimizer, Regularization, Stopping
    from jaxtl.train.ema import EMA
    from jaxtl.train.fit import NonFiniteLossError, evaluate, evaluate_variables, fit
    from jaxtl.train.groups import FROZEN, TRAINABLE, Group, ParamGroups
    from jaxtl.train.losses import (
        CrossEntropy,
        Loss,
        Reconstruction,
        balanced_class_weights,
        cross_entropy,
        imbalance_warning,
        mse,
        topk_correct,
    )
    from jaxtl.train.mixing import Mixing
    from jaxtl.train.model_files import load_variables, read_card, save_variables
    from jaxtl.train.optim import make_optimizer, make_schedule
    from jaxtl.train.parallel import Parallel, pmap_step, prefetch_to_device, shard_map_step
    from jaxtl.train.per_class import ClassReport, collect_predictions
    from jaxtl.train.probe import LinearProbe, extract_features, fit_linear_probe
    from jaxtl.train.progress import Progress
    from jaxtl.train.result import RunResult
    from jaxtl.train.run_store import RunStore
    from jaxtl.train.state import TrainState
    from jaxtl.train.step import eval_step, prepare_images, train_step
    from jaxtl.train.tensorboard import TensorBoard, read_images, read_scalars
    from jaxtl.train.timings import Timings, record_timings
else:
    from jaxtl._lazy import exports

    __getattr__, __dir__ = exports(
        __name__,
        {
            "jaxtl.errors": ("CheckpointDamagedError", "CheckpointError"),
            "jaxtl.lifecycle": ("RunInterrupted", "RunMismatchError", "WorkdirError"),
            "jaxtl.train.config": ("Checkpoints", "Loop", "Optimizer", "Regularization", "Stopping"),
            "jaxtl.train.ema": ("EMA",),
            "jaxtl.train.fit": ("NonFiniteLossError", "evaluate", "evaluate_variables", "fit"),
            "jaxtl.train.groups": ("FROZEN", "TRAINABLE", "Group", "ParamGroups"),
            "jaxtl.train.losses": (
                "CrossEntropy",
                "Loss",
                "Reconstruction",
                "balanced_class_weights",
                "cross_entropy",
                "imbalance_warning",
                "mse",
                "topk_correct",
            ),
            "jaxtl.train.mixing": ("Mixing",),
            "jaxtl.train.model_files": ("load_variables", "read_card", "save_variables"),
            "jaxtl.train.optim": ("make_optimizer", "make_schedule"),
            "jaxtl.train.parallel": ("Parallel", "pmap_step", "prefetch_to_device", "shard_map_step"),
            "jaxtl.train.per_class": ("ClassReport", "collect_predictions"),
            "jaxtl.train.probe": ("LinearProbe", "extract_features", "fit_linear_probe"),
            "jaxtl.train.progress": ("Progress",),
            "jaxtl.train.result": ("RunResult",),
            "jaxtl.train.run_store": ("RunStore",),
            "jaxtl.train.state": ("TrainState",),
            "jaxtl.train.step": ("eval_step", "prepare_images", "train_step"),
            "jaxtl.train.tensorboard": ("TensorBoard", "read_images", "read_scalars"),
            "jaxtl.train.timings": ("Timings", "record_timings"),
        },
    )

__all__ = [
    "FROZEN",
    "TRAINABLE",
    "CheckpointDamagedError",
    "CheckpointError",
    "Checkpoints",
    "ClassReport",
    "CrossEntropy",
    "EMA",
    "Group",
    "LinearProbe",
    "Loop",
    "Loss",
    "Mixing",
    "NonFiniteLossError",
    "Optimizer",
    "Parallel",
    "ParamGroups",
    "Progress",
    "Reconstruction",
    "Regularization",
    "RunInterrupted",
    "RunMismatchError",
    "RunResult",
    "RunStore",
    "Stopping",
    "TensorBoard",
    "Timings",
    "TrainState",
    "WorkdirError",
    "balanced_class_weights",
    "collect_predictions",
    "cross_entropy",
    "eval_step",
    "evaluate",
    "evaluate_variables",
    "extract_features",
    "fit",
    "fit_linear_probe",
    "imbalance_warning",
    "load_variables",
    "make_optimizer",
    "make_schedule",
    "mse",
    "pmap_step",
    "prefetch_to_device",
    "prepare_images",
    "read_card",
    "read_images",
    "read_scalars",
    "record_timings",
    "save_variables",
    "shard_map_step",
    "topk_correct",
    "train_step",
]
