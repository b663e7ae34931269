"""Flax models: the torchvision ResNet family, torch-exact BatchNorm, and the architecture registry."""

from jaxtl.models.autoencoder import Autoencoder, ConvNet, classifier_from_autoencoder
from jaxtl.models.batchnorm import BatchNorm
from jaxtl.models.card import ModelCard, ModelCardError, Preprocessing
from jaxtl.models.heads import head_classes, new_head, replace_head, strip_head
from jaxtl.models.registry import (
    ArchSpec,
    create,
    get_spec,
    list_models,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
)
from jaxtl.models.resnet import ResNet

__all__ = [
    "ArchSpec",
    "Autoencoder",
    "BatchNorm",
    "ConvNet",
    "ModelCard",
    "ModelCardError",
    "Preprocessing",
    "ResNet",
    "classifier_from_autoencoder",
    "create",
    "get_spec",
    "head_classes",
    "list_models",
    "new_head",
    "replace_head",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "strip_head",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]
