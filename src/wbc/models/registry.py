"""One registry for every model ``wbc`` can train: CNNs, transfer backbones and classical pipelines.

Adding a model is one call to :func:`register` with a :class:`ModelSpec`; the CLI
(``wbc models``, ``wbc train --arch``), the comparison and the tests pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable

from ..errors import WbcError


class ModelKind(StrEnum):
    NEURAL = "neural"  # torch.nn.Module trained by wbc.training
    CLASSICAL = "classical"  # scikit-learn pipeline on handcrafted features


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    ``build(num_classes, pretrained)`` returns the model; ``img_size`` is the input side
    the model is designed for; ``pretrained`` says which weights ``pretrained=True`` loads.
    """

    name: str
    build: Callable[..., object]
    img_size: int
    kind: ModelKind = ModelKind.NEURAL
    description: str = ""
    reference: str = ""
    pretrained: str | None = None  # e.g. "ImageNet (torchvision IMAGENET1K_V1)"
    min_img_size: int = 32


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    # importing the modules registers their models
    from . import backbones, cnns  # noqa: F401
    try:
        from .. import classical  # noqa: F401
    except ImportError:  # pragma: no cover - classical extras are part of the base install
        pass


def get_spec(name: str) -> ModelSpec:
    _load_builtin()
    key = name.strip().lower().replace("_", "-")
    for spec in _REGISTRY.values():
        if spec.name.replace("_", "-") == key:
            return spec
    raise WbcError(f"unknown model '{name}'; available: {', '.join(available())}")


def available(kind: ModelKind | None = None) -> list[str]:
    _load_builtin()
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
