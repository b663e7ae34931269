"""jaxtl: transfer learning in JAX.

Pretrain a backbone without labels or bring a torchvision one through :mod:`jaxtl.bridge`, then fine-tune it
data-parallel with the backbone frozen or not. torch is never imported by ``import jaxtl``.
"""

from jaxtl import data, models, train
from jaxtl._cpu_tuning import cpu_tuning_status, tune_cpu  # explicit: importing jaxtl changes no process setting
from jaxtl.bridge import pretrained
from jaxtl.compile_cache import enable_compile_cache
from jaxtl.models import ModelCard, create, list_models
from jaxtl.train import ParamGroups, TrainState, fit, load_variables, save_variables
from jaxtl.transfer import (
    build_classifier,
    evaluate_checkpoint,
    evaluate_classifier,
    finetune,
    finetune_classifier,
    normalize_dataset,
    open_data,
    pretrain_autoencoder,
    pretrain_encoder,
)

__version__ = "0.1.0"

__all__ = [
    "ModelCard",
    "ParamGroups",
    "TrainState",
    "__version__",
    "build_classifier",
    "cpu_tuning_status",
    "create",
    "data",
    "enable_compile_cache",
    "evaluate_checkpoint",
    "evaluate_classifier",
    "finetune",
    "finetune_classifier",
    "fit",
    "list_models",
    "load_variables",
    "models",
    "normalize_dataset",
    "open_data",
    "pretrain_autoencoder",
    "pretrain_encoder",
    "pretrained",
    "save_variables",
    "train",
    "tune_cpu",
]
