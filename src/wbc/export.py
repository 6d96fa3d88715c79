"""``wbc export``: write a trained model in another format.

* ``safetensors`` (optionally ``--half``: fp16 tensors, half the size; how the bundled default
  model is made from its run folder);
* ``onnx``: the network as an ONNX graph (opset 17, dynamic batch) taking the *normalised*
  NCHW float input, with the wbc model information (classes, preprocessing, temperature) in
  the graph's metadata, for ``--backend onnxruntime`` and for other runtimes.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from .errors import WbcError
from .modelio import load_model, resolve_model_path, save_model


class ExportFormat(StrEnum):
    SAFETENSORS = "safetensors"
    ONNX = "onnx"

ONNX_OPSET = 17


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
    if fmt is ExportFormat.ONNX:
        export_onnx(net, info, out)
    else:
        save_model(out, net, info, half=half)
    return out


def export_onnx(net, info, out: Path) -> None:
    import onnx
    import torch

    size = info.preprocess.img_size
    tmp = out.with_name(out.name + ".partial")
    with torch.no_grad():
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, size, size),), str(tmp), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    graph = onnx.load(str(tmp))
    entry = graph.metadata_props.add()
    entry.key, entry.value = "wbc", info.to_json()
    onnx.save(graph, str(tmp))
    tmp.replace(out)
