"""Training: TrainState, per-device steps, parallel wrappers, freezing, the fit loop and linear probes."""

from jaxtl.train.fit import FitResult, NonFiniteLossError, evaluate, fit, restore_run, save_run
from jaxtl.train.freeze import freeze, trainable_mask, trainable_paths
from jaxtl.train.losses import cross_entropy, mse, topk_correct
from jaxtl.train.optim import make_optimizer, make_schedule
from jaxtl.train.parallel import Parallel, pmap_step, prefetch_to_device, shard_map_step
from jaxtl.train.probe import LinearProbe, extract_features, fit_linear_probe
from jaxtl.train.state import TrainState
from jaxtl.train.step import eval_step, train_step

__all__ = [
    "FitResult",
    "LinearProbe",
    "NonFiniteLossError",
    "Parallel",
    "TrainState",
    "cross_entropy",
    "eval_step",
    "evaluate",
    "extract_features",
    "fit",
    "fit_linear_probe",
    "freeze",
    "make_optimizer",
    "make_schedule",
    "mse",
    "pmap_step",
    "prefetch_to_device",
    "restore_run",
    "save_run",
    "shard_map_step",
    "topk_correct",
    "train_step",
    "trainable_mask",
    "trainable_paths",
]
