"""``wbc export``: write a trained model in another format.

* ``safetensors`` (optionally ``--half``: fp16 tensors, half the size; how the bundled default
  model is made from its run folder);
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from .errors import WbcError
from .modelio import load_model, resolve_model_path, save_model


class ExportFormat(StrEnum):
    SAFETENSORS = "safetensors"


def export_model(model: str | Path | None, out: str | Path, fmt: str = "safetensors", half: bool = False) -> Path:
    """Export ``model`` (run folder or file; None = bundled) to ``out`` in ``fmt``; returns ``out``."""
    out = Path(out)
    try:
        fmt = ExportFormat(fmt)
    except ValueError:
        raise WbcError(f"unknown export format '{fmt}'; choose from {', '.join(f.value for f in ExportFormat)}") from None
    if resolve_model_path(model).suffix == ".skops":
        raise WbcError("classical (scikit-learn) models are already portable .skops files; copy the file instead")
    net, info = load_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(out, net, info, half=half)
    return out
