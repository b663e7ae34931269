"""jaxtl: transfer learning in JAX.

Pretrain a backbone without labels or bring a torchvision one through :mod:`jaxtl.bridge`, then fine-tune it
data-parallel with the backbone frozen or not.

    model = jaxtl.pretrained("resnet50", weights="IMAGENET1K_V2")
    config = jaxtl.FinetuneConfig(mode="frozen", loop=jaxtl.Loop(epochs=5))
    result = jaxtl.finetune(config, model, "folder:my_images/", workdir="runs/ft")

``import jaxtl`` imports nothing heavy and changes no process setting: each name below is imported on its first use
(jax and flax with the first model or run, torch only where a .pth file is read, sklearn, matplotlib and Orbax only
by the features that need them). CPU tuning (:func:`tune_cpu`) is an explicit call.
"""

from typing import TYPE_CHECKING

import jaxtl.data.workers  # noqa: F401  (cheap; a data worker importing a script's `import jaxtl` starts lighter)
from jaxtl._version import __version__

if TYPE_CHECKING:
    from jaxtl import data, models, train
    from jaxtl._cpu_tuning import cpu_tuning_status, tune_cpu
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
        ParamGroups,
        Regularization,
        RunResult,
        Stopping,
        TrainState,
        fit,
        load_variables,
        save_variables,
    )
else:
    from jaxtl._lazy import exports

    __getattr__, __dir__ = exports(
        __name__,
        {
            "jaxtl": ("data", "models", "train"),
            "jaxtl.models": ("ModelCard", "create", "list_models"),
            "jaxtl.train": (
                "EMA",
                "Checkpoints",
                "Loop",
                "Optimizer",
                "ParamGroups",
                "Regularization",
                "RunResult",
                "Stopping",
                "TrainState",
                "fit",
                "load_variables",
                "save_variables",
            ),
            "jaxtl._cpu_tuning": ("cpu_tuning_status", "tune_cpu"),
            "jaxtl.bridge": ("pretrained",),
            "jaxtl.compile_cache": ("enable_compile_cache",),
            "jaxtl.errors": ("ConfigError", "DataError", "JaxtlError"),
            "jaxtl.recipes": (
                "ConvertConfig",
                "EvaluateConfig",
                "FinetuneConfig",
                "Input",
                "PretrainConfig",
                "Split",
                "build_classifier",
                "convert",
                "evaluate",
                "evaluate_classifier",
                "finetune",
                "open_data",
                "pretrain",
            ),
        },
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
