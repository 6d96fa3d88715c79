"""``wbc export``: write a trained model in another format.

* ``safetensors`` (optionally ``--half``: fp16 tensors, half the size; how the bundled default
  model is made from its run folder);
* ``onnx``: the network as an ONNX graph (opset 17, dynamic batch) taking the *normalised*
  NCHW float input, with the wbc model information (classes, preprocessing, temperature) in
  the graph's metadata, for ``--backend onnxruntime`` and for other runtimes;
* ``onnx-int8``: the same graph statically quantised (QDQ, per-channel int8 weights, uint8
  activations calibrated on labelled-or-not images you give), 2.5x faster than fp32 ONNX Runtime
  at equal accuracy on the bundled model (docs/decisions/0009-quantisation.md).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from .errors import WbcError
from .modelio import load_model, resolve_model_path, save_model


class ExportFormat(StrEnum):
    SAFETENSORS = "safetensors"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"

ONNX_OPSET = 17


def export_model(model: str | Path | None, out: str | Path, fmt: str = "safetensors", half: bool = False,
                 calibration: list[str | Path] | None = None) -> Path:
    """Export ``model`` (run folder or file; None = bundled) to ``out`` in ``fmt``; returns ``out``.

    ``calibration``: images (files or folders) that set the int8 activation ranges (``onnx-int8``).
    """
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
    elif fmt is ExportFormat.ONNX_INT8:
        export_onnx_int8(net, info, out, calibration or [])
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


def export_onnx_int8(net, info, out: Path, calibration: list[str | Path], max_images: int = 256) -> None:
    """Static int8 quantisation (QDQ, per channel) of the ONNX graph, activations calibrated on ``calibration``."""
    import tempfile

    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from .augment import onnx_input
    from .data import discover, image_files, load_image
    from .errors import BadImageError
    from .preprocessing import prepare

    files: list[Path] = []
    for c in map(Path, calibration):
        if c.suffix.lower() == ".csv":  # a manifest: its validation split (never test images)
            ds = discover(c)
            files += [r.path for r in (ds.split("val").records if "val" in ds.splits else ds.records)]
        else:
            files += image_files([c])
    if not files:
        raise WbcError("onnx-int8 needs --calibration images (a few hundred cells of the kind you will classify)")
    arrays = []
    for f in files[:: max(1, len(files) // max_images)][:max_images]:
        try:
            arrays.append(prepare(load_image(f), info.preprocess))
        except BadImageError:
            continue
    if len(arrays) < 16:
        raise WbcError(f"onnx-int8: only {len(arrays)} readable calibration images; give at least 16")
    x = onnx_input(np.stack(arrays), info.preprocess.mean, info.preprocess.std)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + 16]} for i in range(0, len(x), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(net, info, fp32)
        part = out.with_name(out.name + ".partial")
        quantize_static(str(fp32), str(part), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    import onnx
    graph = onnx.load(str(part))
    if not any(p.key == "wbc" for p in graph.metadata_props):
        entry = graph.metadata_props.add()
        entry.key, entry.value = "wbc", info.to_json()
        onnx.save(graph, str(part))
    part.replace(out)
