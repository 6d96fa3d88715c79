"""Saving and loading trained models safely.

Neural models are one ``.safetensors`` file: the weights plus a JSON header entry
(``wbc``) holding the architecture, class names, preprocessing and calibration. Nothing
in the file can execute code on load. Classical (scikit-learn) models use skops
(``.skops``), see :mod:`wbc.classical`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import WbcError
from .models.ensemble import ENSEMBLE, Ensemble
from .models.registry import get_spec
from .preprocessing import PreprocessConfig

FORMAT_VERSION = 1
MODEL_FILENAMES = ("model.safetensors", "model.skops", "model.onnx")


@dataclass
class ModelInfo:
    arch: str
    classes: list[str]
    preprocess: PreprocessConfig
    temperature: float = 1.0  # softmax temperature fitted on validation data (1 = uncalibrated)
    review_threshold: float | None = None  # confidence below which a cell goes to review
    unknown_threshold: float | None = None  # logit energy below which an image is "unknown" (wbc.ood)
    training: dict[str, Any] = field(default_factory=dict)  # provenance: data, command, epochs, metrics
    members: list[str] = field(default_factory=list)  # arch == "ensemble": the members' architectures

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        d = json.loads(text)
        d.pop("format_version", None)
        d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def default_model_path() -> Path:
    return Path(str(resources.files("wbc") / "assets" / "default_model.safetensors"))


def default_int8_path() -> Path:
    """The bundled model statically quantised to int8 ONNX (``wbc export --format onnx-int8``)."""
    return Path(str(resources.files("wbc") / "assets" / "default_model.int8.onnx"))


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` -> bundled default; a run folder -> its model file; a file -> itself."""
    if model is None:
        path = default_model_path()
        if not path.is_file():
            raise WbcError(f"bundled default model missing at {path}; reinstall wbc or pass --model")
        return path
    path = Path(model)
    if path.is_dir():
        for name in MODEL_FILENAMES:
            if (path / name).is_file():
                return path / name
        raise WbcError(f"{path}: no model file in this folder (expected one of {', '.join(MODEL_FILENAMES)}); "
                       "was training interrupted before the first epoch finished?")
    if not path.is_file():
        raise WbcError(f"{path}: model not found")
    return path


def save_model(path: Path, model: torch.nn.Module, info: ModelInfo, half: bool = False) -> None:
    """Write weights + info atomically. ``half`` stores float tensors as fp16 (for the bundle)."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[k] = v.half() if half and v.is_floating_point() else v
    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata={"wbc": info.to_json()})
    os.replace(tmp, path)


def read_info(path: Path) -> ModelInfo:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise WbcError(f"{path}: not a readable wbc model file ({exc})") from None
    if "wbc" not in meta:
        raise WbcError(f"{path}: a safetensors file without wbc model information (arch, classes)")
    return ModelInfo.from_json(meta["wbc"])


def build_network(info: ModelInfo) -> torch.nn.Module:
    """The untrained network ``info`` describes (an :class:`~wbc.models.ensemble.Ensemble` of its members)."""
    if info.arch == ENSEMBLE:
        if len(info.members) < 2:
            raise WbcError(f"an ensemble model file must name at least two member architectures, got {info.members}")
        return Ensemble([get_spec(a).build(num_classes=len(info.classes), pretrained=False) for a in info.members])
    return get_spec(info.arch).build(num_classes=len(info.classes), pretrained=False)


def combine_models(models: list[str | Path], out: str | Path, half: bool = False) -> Path:
    """Write one ``.safetensors`` model that averages the logits of ``models`` (same classes and preprocessing).

    An ensemble among ``models`` contributes its members, each weighted like any other member (the
    result is one flat ensemble). Temperature, review and unknown thresholds are not carried over:
    fit them on the ensemble with ``wbc calibrate``.
    """
    if len(models) < 2:
        raise WbcError("an ensemble needs at least two models")
    paths = [resolve_model_path(m) for m in models]
    for p in paths:
        if p.suffix != ".safetensors":
            raise WbcError(f"{p}: wbc ensemble combines neural .safetensors models (export ONNX from the ensemble)")
    if len(set(p.resolve() for p in paths)) < len(paths):
        raise WbcError(f"the same model is given twice ({', '.join(str(m) for m in models)})")
    out = Path(out)
    if out.suffix != ".safetensors" or out.is_dir():
        raise WbcError(f"{out}: the ensemble is written as a model file ending in .safetensors")
    nets, infos = zip(*(load_model(p) for p in paths))
    first = infos[0]
    for m, info in zip(models[1:], infos[1:]):
        if info.classes != first.classes:
            raise WbcError(f"{m}: classes {info.classes} differ from {models[0]}'s {first.classes}")
        if info.preprocess.to_dict() != first.preprocess.to_dict():
            raise WbcError(f"{m}: preprocessing {info.preprocess.to_dict()} differs from {models[0]}'s "
                           f"{first.preprocess.to_dict()}")
    members, archs, provenance = [], [], []
    for net, info in zip(nets, infos):  # an ensemble of ensembles is one flat ensemble
        if info.arch == ENSEMBLE:
            members += list(net.members)
            archs += info.members
            provenance += info.training.get("members", [{}] * len(info.members))
        else:
            members.append(net)
            archs.append(info.arch)
            provenance.append(dict(info.training, arch=info.arch))
    info = ModelInfo(arch=ENSEMBLE, classes=list(first.classes), preprocess=first.preprocess, members=archs,
                     training={"command": shlex.join(sys.argv), "ensemble_of": [str(m) for m in models],
                               "members": provenance})
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(out, Ensemble(members), info, half=half)
    return out


def load_model(model: str | Path | None) -> tuple[torch.nn.Module, ModelInfo]:
    """Build the architecture and load the weights; returns the model in eval mode (fp32)."""
    path = resolve_model_path(model)
    if path.suffix == ".skops":
        raise WbcError(f"{path}: a classical model; load it with wbc.classical.load_classical")
    if path.suffix == ".onnx":
        raise WbcError(f"{path}: an ONNX model; run it with --backend onnxruntime")
    info = read_info(path)
    net = build_network(info)
    state = load_file(str(path))
    ref = net.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise WbcError(f"{path}: weights do not match architecture '{info.arch}' ({str(exc).splitlines()[0]})") from None
    return net.eval(), info
