"""Recipes: pretrain, fine-tune, evaluate and convert as library calls driven by config objects, each through the
one run lifecycle (:mod:`jaxtl.lifecycle`). ``jaxtl``"s commands are these calls."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxtl.recipes.config import (
        AUGMENT_CHOICES,
        MODES,
        ConvertConfig,
        EvaluateConfig,
        FinetuneConfig,
        Input,
        PretrainConfig,
        Split,
        parse_denoise,
    )
    from jaxtl.recipes.conversion import Converted, convert
    from jaxtl.recipes.data import open_data
    from jaxtl.recipes.evaluation import evaluate, evaluate_classifier
    from jaxtl.recipes.finetuning import finetune
    from jaxtl.recipes.model import as_model, build_classifier
    from jaxtl.recipes.pretraining import encoder_variables, pretrain
else:
    from jaxtl._lazy import exports

    __getattr__, __dir__ = exports(
        __name__,
        {
            "jaxtl.recipes.config": (
                "AUGMENT_CHOICES",
                "MODES",
                "ConvertConfig",
                "EvaluateConfig",
                "FinetuneConfig",
                "Input",
                "PretrainConfig",
                "Split",
                "parse_denoise",
            ),
            "jaxtl.recipes.conversion": ("Converted", "convert"),
            "jaxtl.recipes.data": ("open_data",),
            "jaxtl.recipes.evaluation": ("evaluate", "evaluate_classifier"),
            "jaxtl.recipes.finetuning": ("finetune",),
            "jaxtl.recipes.model": ("as_model", "build_classifier"),
            "jaxtl.recipes.pretraining": ("encoder_variables", "pretrain"),
        },
    )

__all__ = [
    "AUGMENT_CHOICES",
    "MODES",
    "ConvertConfig",
    "Converted",
    "EvaluateConfig",
    "FinetuneConfig",
    "Input",
    "PretrainConfig",
    "Split",
    "as_model",
    "build_classifier",
    "convert",
    "encoder_variables",
    "evaluate",
    "evaluate_classifier",
    "finetune",
    "open_data",
    "parse_denoise",
    "pretrain",
]
