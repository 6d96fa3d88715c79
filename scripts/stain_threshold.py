"""The stain rule's threshold, on validation data only (docs/decisions/0013, "stain rule").

    python scripts/stain_threshold.py        # after `bash scripts/results.sh ood` built runs/ood; ~1 min

Prints, per class of the PBC and Kaggle validation splits and per kind of the OOD set's val half, the
99th-percentile nucleus score (`wbc.preprocessing.nucleus_score`) of the WBC-centred crop before colour
normalisation, and for candidate thresholds the share of validation cells and OOD images they catch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wbc.data import discover
from wbc.modelio import default_model_path, read_info
from wbc.preprocessing import crop_on_wbc, stain_scores

ROOT = Path(__file__).resolve().parents[1]


def p99(path: Path, crop: float) -> float:
    return float(np.percentile(stain_scores(np.asarray(crop_on_wbc(Image.open(path).convert("RGB"), crop))), 99))


def main() -> None:
    crop = read_info(default_model_path()).preprocess.crop or 1.0
    res: dict[str, list[float]] = {}
    for man in ("pbc.csv", "kaggle.csv"):
        for r in discover(str(ROOT / "data/splits" / man)).split("val").records:
            res.setdefault(f"{man}:{r.label}", []).append(p99(r.path, crop))
    for kind in ("background", "rbc", "platelet", "non-microscopy"):
        res[f"OOD-val:{kind}"] = [p99(p, crop) for p in sorted((ROOT / "runs/ood/val" / kind).glob("*"))]
    cells = np.concatenate([v for k, v in res.items() if not k.startswith("OOD")])
    for k, v in sorted(res.items()):
        v = np.asarray(v)
        print(f"{k:28s} n={len(v):4d}  p99 min {v.min():6.1f}  median {np.median(v):6.1f}  max {v.max():6.1f}")
    print(f"validation cells: n={len(cells)}, lowest {cells.min():.1f}")
    for t in (20, 25, 30, 35, 40):
        caught = {k.split(":")[1]: f"{100 * np.mean(np.asarray(v) < t):.0f} %" for k, v in res.items()
                  if k.startswith("OOD")}
        print(f"threshold {t}: validation cells caught {100 * np.mean(cells < t):.2f} %, OOD val half {caught}")


if __name__ == "__main__":
    main()
