"""Accuracy vs speed of the candidate default models (docs/decisions/0012-default-model-choice.md).

    python bench/pareto.py        # ~2 min; prints a Markdown table

Speed: the torch path (channels_last, bf16 autocast, BatchNorm folded), batches of 64 preprocessed
real PBC test cells, same run for every model. Accuracy: the model's PBC test metrics.json written by
scripts/results.sh (and for the bundled model its int8 twin, the shipped path).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_info  # noqa: E402
from run_all import _pbc_test_paths  # noqa: E402

CANDIDATES = {  # name: (model, PBC test metrics)
    "mobilenet_v2 128 px (PBC only)": ("results/pbc/mobilenet_v2", "results/pbc/mobilenet_v2/eval/metrics.json"),
    "efficientnet_lite0 128 px (PBC only)": ("results/pbc/efficientnet_lite0",
                                             "results/pbc/efficientnet_lite0/eval/metrics.json"),
    "risodkar-cnn 102 px (PBC only)": ("results/pbc/risodkar-cnn", "results/pbc/risodkar-cnn/eval/metrics.json"),
    "asghar-cnn 100 px (PBC only)": ("results/pbc/asghar-cnn", "results/pbc/asghar-cnn/eval/metrics.json"),
    "member a: mobilenet_v2 160 px (PBC + Kaggle, refit on train + val)": (
        "runs/refit-a", "results/default/members-test/member-a-pbc/metrics.json"),
    "member b: mobilenet_v2 160 px (PBC + Kaggle, --cap-each-source, refit on train + val)": (
        "runs/refit-b", "results/default/members-test/member-b-pbc/metrics.json"),
    "bundled: ensemble of members a and b, torch path": (None, "results/default/pbc-test/metrics.json"),
}


def main() -> None:
    from PIL import Image

    from wbc.errors import WbcError
    from wbc.inference import Predictor, load_predictor
    from wbc.modelio import resolve_model_path
    from wbc.preprocessing import prepare
    paths = _pbc_test_paths(256)
    images = [Image.open(p).convert("RGB") for p in paths]
    rows = []

    def speed(pred, arrays) -> float:
        pred.predict_arrays(arrays[:64])
        t = time.perf_counter()
        for _ in range(2):
            pred.predict_arrays(arrays)
        return 2 * len(arrays) / (time.perf_counter() - t)

    for name, (model, metrics) in CANDIDATES.items():
        try:
            resolve_model_path(None if model is None else ROOT / model)
        except WbcError:
            print(f"skipped {name}: no weights at {model} (run its step of scripts/results.sh)", file=sys.stderr)
            continue
        pred = Predictor(None if model is None else ROOT / model)
        arrays = np.stack([prepare(im, pred.info.preprocess) for im in images])
        m = json.loads((ROOT / metrics).read_text())
        rows.append((name, m["accuracy"], speed(pred, arrays)))
    shipped = load_predictor(None)
    arrays = np.stack([prepare(im, shipped.info.preprocess) for im in images])
    m = json.loads((ROOT / "results/default/pbc-test/metrics.json").read_text())
    rows.append(("bundled, int8 ONNX (shipped)", m["accuracy"], speed(shipped, arrays)))
    mi = machine_info()
    print(f"Machine: {mi['cpu']}, {mi['logical_cores']} cores, torch {mi['torch']}.\n")
    print("| model | PBC test accuracy % | cells/s (batch 64) |\n|---|---|---|")
    for name, acc, cps in rows:
        print(f"| {name} | {100 * acc:.1f} | {cps:.0f} |")


if __name__ == "__main__":
    main()
