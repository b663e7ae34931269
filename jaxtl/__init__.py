"""jaxtl: transfer learning in JAX.

Pretrain a backbone without labels or bring a torchvision one through :mod:`jaxtl.bridge`, then fine-tune it
data-parallel with the backbone frozen or not. torch is never imported by ``import jaxtl``.
"""

from jaxtl._cpu_tuning import apply_cpu_tuning

CPU_TUNING = apply_cpu_tuning()  # before anything below imports jax: which CPU settings are in effect

from jaxtl import data, models, train  # noqa: E402
from jaxtl.compile_cache import enable_compile_cache  # noqa: E402
from jaxtl.models import create, list_models  # noqa: E402
from jaxtl.train.freeze import freeze  # noqa: E402
from jaxtl.transfer import (  # noqa: E402
    build_classifier,
    evaluate_classifier,
    finetune,
    normalize_dataset,
    pretrain_autoencoder,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "build_classifier",
    "create",
    "data",
    "enable_compile_cache",
    "evaluate_classifier",
    "finetune",
    "freeze",
    "list_models",
    "models",
    "normalize_dataset",
    "pretrain_autoencoder",
    "train",
]
