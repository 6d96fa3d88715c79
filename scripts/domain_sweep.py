"""Short-budget sweep of training recipes for cross-source robustness (docs/decisions/0011).

    python scripts/domain_sweep.py [--out runs/sweep]          # ~12 min on 2 cores

Every recipe trains on PBC train + Kaggle TRAIN (400 images per class, 3 epochs, 128 px, crop 0.7,
class weights, lr 5e-4) and is judged on VALIDATION only: the Kaggle val split (sources disjoint
from TRAIN) and the PBC val split. No test split is touched.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

RECIPES = [  # name, arch, augmentation preset, label smoothing
    ("standard", "mobilenet_v2", "standard", 0.0),
    ("stain", "mobilenet_v2", "stain", 0.0),
    ("stain+ls0.1", "mobilenet_v2", "stain", 0.1),
    ("effnet-lite0 stain+ls0.1", "efficientnet_lite0", "stain", 0.1),
]


def main() -> None:
    from wbc.evaluation import EvalConfig, evaluate
    from wbc.training import TrainConfig, train
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sweep", help="(default: runs/sweep)")
    a = ap.parse_args()
    rows = []
    for name, arch, preset, ls in RECIPES:
        out = Path(a.out) / name.replace(" ", "_")
        t0 = time.perf_counter()
        if not (out / "run.json").is_file():
            train(TrainConfig(data=["data/splits/pbc.csv", "data/splits/kaggle.csv"], out=str(out), arch=arch,
                              img_size=128, epochs=3, lr=5e-4, max_per_class=400, class_weights=True,
                              monitor="val_accuracy", augment_preset=preset, label_smoothing=ls,
                              preprocess={"crop": 0.7}, progress=False, patience=9))
        minutes = (time.perf_counter() - t0) / 60
        res = []
        for data in ("data/splits/kaggle.csv", "data/splits/pbc.csv"):
            m = evaluate(EvalConfig(data=data, out=str(out / f"val-{Path(data).stem}"), model=str(out), split="val",
                                    progress=False))
            res.append(m)
        mono = res[0]["per_class"]["monocyte"]["recall"]
        rows.append(f"| {name} | {100 * res[0]['balanced_accuracy']:.1f} | {100 * mono:.1f} | "
                    f"{100 * res[1]['accuracy']:.1f} | {minutes:.1f} |")
        print(rows[-1], flush=True)
    print("| recipe | Kaggle val balanced acc % | Kaggle val monocyte recall % | PBC val acc % | minutes |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
