"""torchvision <-> Flax weights for the ResNet, ViT and ConvNeXt families (installed as ``jaxtl.bridge``). torch is
imported only where it is needed: writing a .pth, reading a torch object or a .pth that is not a zip-format file of
tensors and plain values (those, .safetensors files and cached conversions are read without it).

    module, variables, card = pretrained("resnet50", weights="IMAGENET1K_V2", num_classes=10)
    module, variables = from_torchvision("resnet50.pth", num_classes=10)
    state_dict = to_torchvision(variables, "resnet50")
"""

from .check import inspect_state_dict
from .checkpoints import Located, locate
from .convert import from_torchvision
from .errors import BridgeError, WeightsUnavailableError
from .export import to_torchvision
from .flax_io import load_flax_safetensors, read_flax_safetensors, save_flax_safetensors
from .hub import Pretrained, pretrained
from .infer import infer_arch
from .io import load_state_dict
from .report import BridgeReport, Conversion
from .safetensors_io import load_safetensors, save_safetensors
from .weights import cached_weights_file, fetch, resolve_name, weights_names

__all__ = [
    "BridgeError",
    "BridgeReport",
    "Conversion",
    "Located",
    "Pretrained",
    "WeightsUnavailableError",
    "cached_weights_file",
    "fetch",
    "from_torchvision",
    "infer_arch",
    "inspect_state_dict",
    "load_flax_safetensors",
    "load_safetensors",
    "load_state_dict",
    "locate",
    "pretrained",
    "read_flax_safetensors",
    "resolve_name",
    "save_flax_safetensors",
    "save_safetensors",
    "to_torchvision",
    "weights_names",
]
