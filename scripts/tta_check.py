"""Does test-time augmentation pay on this CPU? Dihedral views of each cell, logits averaged (validation only).

    python scripts/tta_check.py      # ~3 min; prints accuracy and balanced accuracy per view set

Rows: the PBC-only robust model on 2,500 cells of the Kaggle train split (it never saw Kaggle, so that split
is validation data for it, docs/decisions/0014), and the validated twin of the bundled model on the Kaggle
and PBC validation splits. Views: none; identity + horizontal flip (2x the inference cost); 4 rotations
(4x); all 8 dihedral views (8x). Needs `bash scripts/results.sh crossdomain default` to have run.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score

ROOT = Path(__file__).resolve().parent.parent
FOUR = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def sample(manifest: Path, split: str, n: int, rng: np.random.Generator) -> list:
    from wbc.data import ImageRecord
    rows = [r for r in csv.DictReader(manifest.open()) if r["split"] == split]
    pick = sorted(rng.permutation(len(rows))[:n])
    return [ImageRecord((manifest.parent / rows[i]["path"]).resolve(), rows[i]["label"]) for i in pick]


def views(arr: np.ndarray) -> dict[str, np.ndarray]:
    flip = arr[:, :, ::-1]
    out = {"identity": arr, "hflip": flip}
    out.update({f"rot{90 * k}": np.rot90(arr, k, (1, 2)) for k in (1, 2, 3)})
    out.update({f"flip+rot{90 * k}": np.rot90(flip, k, (1, 2)) for k in (1, 2, 3)})
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def check(model: Path, data: list, classes: list[str] | None) -> list[str]:
    from wbc.imageset import decode_images
    from wbc.inference import Predictor
    pred = Predictor(model)
    arr, data = decode_images(data, pred.info.preprocess, progress=False)
    keep = [pred.classes.index(c) for c in classes] if classes else list(range(len(pred.classes)))
    names = [pred.classes[i] for i in keep]
    logits = {k: pred.logits_arrays(v)[:, keep] for k, v in views(arr).items()}
    truth = [r.label for r in data]
    sets = {"none (1x)": ["identity"], "+ horizontal flip (2x)": ["identity", "hflip"],
            "4 rotations (4x)": ["identity", "rot90", "rot180", "rot270"], "8 dihedral views (8x)": list(logits)}
    lines = []
    for name, keys in sets.items():
        guess = [names[i] for i in np.mean([logits[k] for k in keys], 0).argmax(1)]
        lines.append(f"| {name} | {100 * accuracy_score(truth, guess):.1f} | "
                     f"{100 * balanced_accuracy_score(truth, guess):.1f} |")
    return lines


def main() -> int:
    rng = np.random.default_rng(0)
    kaggle, pbc = ROOT / "data/splits/kaggle.csv", ROOT / "data/splits/pbc.csv"
    runs = [("PBC-only robust model → Kaggle train split (2,500 cells)", ROOT / "runs/crossdomain/pbc-only-robust",
             sample(kaggle, "train", 2500, rng), FOUR),
            ("validated twin → Kaggle val split", ROOT / "runs/default-validated.safetensors",
             sample(kaggle, "val", 10**6, rng), FOUR),
            ("validated twin → PBC val split (2,000 cells)", ROOT / "runs/default-validated.safetensors",
             sample(pbc, "val", 2000, rng), None)]
    for title, model, data, classes in runs:
        print(f"\n{title}\n\n| views | accuracy % | balanced accuracy % |\n|---|---|---|")
        print("\n".join(check(model, data, classes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
