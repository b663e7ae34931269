"""Recipes: pretrain, fine-tune, evaluate and convert as library calls driven by config objects, each through the
one run lifecycle (:mod:`jaxtl.lifecycle`). ``jaxtl``'s commands are these calls."""

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
