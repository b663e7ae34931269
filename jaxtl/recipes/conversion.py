"""Converting torchvision weights into a saved jaxtl model (what ``jaxtl convert`` does), through the output
lifecycle: the outputs (the model directory and an optional Flax-layout ``.safetensors``) are checked before the
conversion, written under temporary names, and committed together; nothing of the user's is replaced."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from jaxtl.errors import ConfigError
from jaxtl.outputs import Output, write_outputs
from jaxtl.recipes.config import ConvertConfig
from jaxtl.train.model_files import write_variables
from jaxtl.train.result import RunResult

__all__ = ["Converted", "convert"]


class Converted(RunResult):
    """A :class:`RunResult` of a conversion, with the bridge's ``report`` (what was unwrapped, stripped, dropped)
    and ``param_count``, the parameters of the model as saved (its new or dropped head counted as saved)."""

    report: Any
    param_count: int


def convert(
    src: str | pathlib.Path,
    out: str | pathlib.Path,
    config: ConvertConfig = ConvertConfig(),  # noqa: B008  (frozen)
    *,
    overwrite: bool = False,
) -> Converted:
    """Convert the torchvision weights in ``src`` (``.pth``/``.pt``/``.safetensors``, a training checkpoint too)
    into a model directory at ``out`` (variables + model card), and with ``config.safetensors`` a Flax-layout
    ``.safetensors`` too. ``overwrite`` replaces outputs only where they are exactly what jaxtl wrote; an output
    that is the source itself is refused."""
    from jaxtl.bridge import from_torchvision, save_flax_safetensors

    if not isinstance(config, ConvertConfig):
        raise ConfigError(f"config must be a ConvertConfig, got {type(config).__name__}", "config")
    src, out = pathlib.Path(src), pathlib.Path(out)
    outputs = [Output(out, "dir", "OUT")]
    if config.safetensors:
        st = pathlib.Path(config.safetensors)
        if st.is_dir():
            raise ConfigError(f"safetensors {st} is a directory; give a file path", "safetensors")
        if st.absolute() == out.absolute():
            raise ConfigError("safetensors must be another path than OUT", "safetensors")
        outputs.append(Output(st, "file", "safetensors"))
    done: dict[str, Any] = {}

    def produce(tmps: list[pathlib.Path]) -> None:
        conv = from_torchvision(
            src,
            arch=config.arch,
            num_classes=config.num_classes,
            seed=config.seed,
            prefix=config.prefix,
            entry=config.entry,
        )
        rep = conv.report
        extra = {"source_num_classes": rep.source_num_classes, "fc_reinitialized": rep.fc_reinitialized}
        if rep.fc_reinitialized:
            extra["seed"] = config.seed
        card = conv.card.replace(source=str(src), extra={**conv.card.extra, **extra})
        write_variables(tmps[0], conv.variables, card)
        if len(tmps) > 1:
            save_flax_safetensors(conv.variables, tmps[1], card=card)
        done.update(module=conv.module, variables=conv.variables, card=card, report=rep)

    write_outputs(outputs, produce, overwrite=overwrite, sources=[src])  # type: ignore[arg-type]
    result = Converted(done["module"], done["variables"], done["card"], path=out.absolute())
    result.report = done["report"]
    result.param_count = int(sum(np.size(x) for x in jax.tree.leaves(done["variables"]["params"])))
    return result
