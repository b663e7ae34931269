"""jaxtl: transfer learning in JAX.

Pretrain a backbone without labels or bring a torchvision one through :mod:`jaxtl.bridge`, then fine-tune it
data-parallel with the backbone frozen or not. torch is never imported by ``import jaxtl``.

    model = jaxtl.pretrained("resnet50", weights="IMAGENET1K_V2")
    config = jaxtl.FinetuneConfig(mode="frozen", loop=jaxtl.Loop(epochs=5))
    result = jaxtl.finetune(config, model, "folder:my_images/", workdir="runs/ft")
"""

from jaxtl import data, models, train
from jaxtl._cpu_tuning import cpu_tuning_status, tune_cpu  # explicit: importing jaxtl changes no process setting
from jaxtl._version import __version__
from jaxtl.bridge import pretrained
from jaxtl.compile_cache import enable_compile_cache
from jaxtl.errors import ConfigError, DataError, JaxtlError
from jaxtl.models import ModelCard, create, list_models
from jaxtl.recipes import (
    ConvertConfig,
    EvaluateConfig,
    FinetuneConfig,
    Input,
    PretrainConfig,
    Split,
    build_classifier,
    convert,
    evaluate,
    evaluate_classifier,
    finetune,
    open_data,
    pretrain,
)
from jaxtl.train import (
    EMA,
    Checkpoints,
    Loop,
    Optimizer,
    Regularization,
    Stopping,
    ParamGroups,
    RunResult,
    TrainState,
    fit,
    load_variables,
    save_variables,
)

__all__ = [
    "EMA",
    "Checkpoints",
    "ConfigError",
    "ConvertConfig",
    "DataError",
    "EvaluateConfig",
    "FinetuneConfig",
    "Input",
    "JaxtlError",
    "Loop",
    "ModelCard",
    "Optimizer",
    "ParamGroups",
    "PretrainConfig",
    "Regularization",
    "RunResult",
    "Split",
    "Stopping",
    "TrainState",
    "__version__",
    "build_classifier",
    "convert",
    "cpu_tuning_status",
    "create",
    "data",
    "enable_compile_cache",
    "evaluate",
    "evaluate_classifier",
    "finetune",
    "fit",
    "list_models",
    "load_variables",
    "models",
    "open_data",
    "pretrain",
    "pretrained",
    "save_variables",
    "train",
    "tune_cpu",
]
