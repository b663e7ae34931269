"""Training: TrainState, parameter groups, per-device steps, parallel wrappers, the fit loop and its configs,
run checkpoints, saved models, probes."""

from jaxtl.errors import CheckpointDamagedError, CheckpointError
from jaxtl.lifecycle import RunInterrupted, RunMismatchError, WorkdirError
from jaxtl.train.config import Checkpoints, Loop, Optimizer
from jaxtl.train.fit import NonFiniteLossError, evaluate, evaluate_variables, fit
from jaxtl.train.groups import FROZEN, TRAINABLE, Group, ParamGroups
from jaxtl.train.losses import CrossEntropy, Loss, Reconstruction, cross_entropy, mse, topk_correct
from jaxtl.train.model_files import load_variables, read_card, save_variables
from jaxtl.train.optim import make_optimizer, make_schedule
from jaxtl.train.parallel import Parallel, pmap_step, prefetch_to_device, shard_map_step
from jaxtl.train.probe import LinearProbe, extract_features, fit_linear_probe
from jaxtl.train.progress import Progress
from jaxtl.train.result import RunResult
from jaxtl.train.run_store import RunStore
from jaxtl.train.state import TrainState
from jaxtl.train.step import eval_step, prepare_images, train_step

__all__ = [
    "FROZEN",
    "TRAINABLE",
    "CheckpointDamagedError",
    "CheckpointError",
    "Checkpoints",
    "CrossEntropy",
    "Group",
    "LinearProbe",
    "Loop",
    "Loss",
    "NonFiniteLossError",
    "Optimizer",
    "Parallel",
    "ParamGroups",
    "Progress",
    "Reconstruction",
    "RunInterrupted",
    "RunMismatchError",
    "RunResult",
    "RunStore",
    "TrainState",
    "WorkdirError",
    "cross_entropy",
    "eval_step",
    "evaluate",
    "evaluate_variables",
    "extract_features",
    "fit",
    "fit_linear_probe",
    "load_variables",
    "make_optimizer",
    "make_schedule",
    "mse",
    "pmap_step",
    "prefetch_to_device",
    "prepare_images",
    "read_card",
    "save_variables",
    "shard_map_step",
    "topk_correct",
    "train_step",
]
