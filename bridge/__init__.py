"""torchvision <-> Flax weights (installed as ``jaxtl.bridge``). torch is imported only when a .pth or torch object
is read or written; .safetensors files and cached conversions are handled without it.

    module, variables, card = pretrained("resnet50", weights="IMAGENET1K_V2", num_classes=10)
    module, variables = from_torchvision("resnet50.pth", num_classes=10)
    state_dict = to_torchvision(variables, "resnet50")
"""

from .checkpoints import Located, locate
from .convert import BridgeReport, Conversion, from_torchvision, inspect_state_dict, to_torchvision
from .errors import BridgeError
from .flax_io import load_flax_safetensors, read_flax_safetensors, save_flax_safetensors
from .hub import Pretrained, cached_weights_file, fetch, pretrained, resolve_name, weights_names
from .infer import infer_arch
from .io import load_state_dict
from .safetensors_io import load_safetensors, save_safetensors

__all__ = [
    "BridgeError",
    "BridgeReport",
    "Conversion",
    "Located",
    "Pretrained",
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
