"""Is INT8 worth it? Static QDQ quantisation of the bundled model in ONNX Runtime vs fp32 ONNX and torch bf16.

    python scripts/quantise_check.py [--n 600]      # ~3 min; docs/decisions/0009-quantisation.md quotes it

Calibration: 128 PBC validation cells; accuracy and throughput: the first N PBC test cells (batch 64).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from wbc.augment import normalise, to_float
    from wbc.export import export_model
    from wbc.inference import Predictor
    from wbc.preprocessing import prepare
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="test cells (default: 600)")
    a = ap.parse_args()
    split = ROOT / "data" / "splits" / "pbc.csv"
    rows = list(csv.DictReader(split.open()))
    pred = Predictor()
    pre = pred.info.preprocess

    def arrays(kind: str, n: int):
        rs = [r for r in rows if r["split"] == kind][:n]
        x = np.stack([prepare(Image.open(split.parent / r["path"]).convert("RGB"), pre) for r in rs])
        return x, np.array([pred.classes.index(r["label"]) for r in rs])

    x_cal, _ = arrays("val", 128)
    x_test, y_test = arrays("test", a.n)
    norm = lambda x: normalise(to_float(torch.from_numpy(x)), pre.mean, pre.std).contiguous().numpy()  # noqa: E731

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": norm(x_cal[i:i + 16])} for i in range(0, len(x_cal), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_model(None, fp32, "onnx")
        int8 = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                    for name, p in (("onnxruntime fp32", fp32), ("onnxruntime int8 (static, QDQ)", int8))}
        results = {}
        xn = norm(x_test)
        for name, s in sessions.items():
            run = lambda: np.concatenate([s.run(None, {"input": xn[i:i + 64]})[0] for i in range(0, len(xn), 64)])  # noqa: E731,B023
            run()
            t = time.perf_counter()
            logits = run()
            results[name] = (float((logits.argmax(1) == y_test).mean()), len(xn) / (time.perf_counter() - t))
        pred.predict_arrays(x_test[:64])
        t = time.perf_counter()
        p = pred.predict_arrays(x_test)
        results["torch bf16 (shipped predictor)"] = (float((p.argmax(1) == y_test).mean()),
                                                     len(x_test) / (time.perf_counter() - t))
    print(f"| engine | PBC test accuracy % ({len(y_test)} cells) | cells/s |\n|---|---|---|")
    for name, (acc, speed) in results.items():
        print(f"| {name} | {100 * acc:.1f} | {speed:.0f} |")


if __name__ == "__main__":
    main()
