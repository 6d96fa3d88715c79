"""Out-of-distribution check (issue 7): does the bundled model give low confidence to things that are not WBCs?

    python scripts/ood.py [--out results/ood] [--work runs/ood]     # ~1 min

Assembles, outside the repository (--work), a small OOD set from the BCCD fields and synthetic images:
* RBC-only crops: 320x240 windows around VOC red-cell boxes that overlap no WBC box (cells of the wrong kind);
* platelet-only crops: the same around platelet boxes;
* blank background: 320x240 windows of the emptiest part of each field, with the WBC area excluded;
* non-microscopy: synthetic noise, gradients, checkerboards and text images.
In-distribution reference: the PBC and Kaggle test images the model never trained on (a sample).
Reports per set the share of images below the model's review threshold and the AUROC of the maximum
calibrated probability for in- vs out-of-distribution.
"""

from __future__ import annotations

import argparse
import csv
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ANN = DATA / "BCCD_Dataset" / "BCCD" / "Annotations"
FIELDS = DATA / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages"


def _boxes(xml: Path) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {}
    for obj in ET.parse(xml).getroot().iter("object"):
        b = obj.find("bndbox")
        out.setdefault(obj.findtext("name"), []).append([int(float(b.findtext(k))) for k in
                                                          ("xmin", "ymin", "xmax", "ymax")])
    return out


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _window(img: Image.Image, cx: float, cy: float) -> Image.Image:
    left = int(min(max(cx - 160, 0), img.width - 320))
    top = int(min(max(cy - 120, 0), img.height - 240))
    return img.crop((left, top, left + 320, top + 240)), (left, top, left + 320, top + 240)


def build(work: Path, per_kind: int, seed: int) -> dict[str, list[Path]]:
    rng = random.Random(seed)
    sets: dict[str, list[Path]] = {"rbc": [], "platelet": [], "background": [], "non-microscopy": []}
    for d in sets:
        (work / d).mkdir(parents=True, exist_ok=True)
    xmls = sorted(ANN.glob("*.xml"))
    rng.shuffle(xmls)
    for xml in xmls:
        img_path = FIELDS / f"{xml.stem}.jpg"
        if not img_path.is_file():
            continue
        boxes = _boxes(xml)
        wbcs = boxes.get("WBC", [])
        img = Image.open(img_path).convert("RGB")
        for kind, name in (("rbc", "RBC"), ("platelet", "Platelets")):
            if len(sets[kind]) >= per_kind:
                continue
            for b in boxes.get(name, []):
                crop, win = _window(img, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
                if not any(_overlaps(win, w) for w in wbcs):  # no WBC anywhere in the window
                    p = work / kind / f"{xml.stem}_{b[0]}_{b[1]}.png"
                    crop.save(p)
                    sets[kind].append(p)
                    break
        if len(sets["background"]) < per_kind:
            arr = np.asarray(img.convert("L"), np.float32)
            best = None
            for cy in range(120, img.height - 119, 40):
                for cx in range(160, img.width - 159, 40):
                    _, win = _window(img, cx, cy)
                    if any(_overlaps(win, w) for w in wbcs):
                        continue
                    dark = float((arr[win[1]:win[3], win[0]:win[2]] < 150).mean())  # cells are darker than plasma
                    if best is None or dark < best[0]:
                        best = (dark, cx, cy)
            if best is not None:
                p = work / "background" / f"{xml.stem}.png"
                _window(img, best[1], best[2])[0].save(p)
                sets["background"].append(p)
        if all(len(v) >= per_kind for k, v in sets.items() if k != "non-microscopy"):
            break
    gen = np.random.default_rng(seed)
    for i in range(per_kind):
        kind = i % 4
        if kind == 0:
            arr = gen.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        elif kind == 1:
            g = np.linspace(0, 255, 320, dtype=np.float32)[None, :, None] * np.ones((240, 1, 3), np.float32)
            arr = (g * gen.uniform(0.3, 1.0, 3)).astype(np.uint8)
        elif kind == 2:
            yy, xx = np.mgrid[:240, :320]
            arr = ((((yy // 20) + (xx // 20)) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
        else:
            im = Image.new("RGB", (320, 240), tuple(int(c) for c in gen.integers(150, 256, 3)))
            ImageDraw.Draw(im).text((20, 100), f"lab report {i} - not a cell", fill=(0, 0, 0))
            arr = np.asarray(im)
        p = work / "non-microscopy" / f"synthetic_{i:03d}.png"
        Image.fromarray(arr).save(p)
        sets["non-microscopy"].append(p)
    return sets


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from wbc.inference import load_predictor
    from wbc.io import write_json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "ood"), help="(default: results/ood)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "ood"), help="(default: runs/ood)")
    ap.add_argument("--per-kind", type=int, default=60, help="images per OOD kind (default: 60)")
    a = ap.parse_args()
    sets = build(Path(a.work), a.per_kind, seed=0)
    pred = load_predictor(None)
    thr = pred.info.review_threshold
    ind = []
    for manifest in ("pbc.csv", "kaggle.csv"):
        rows = [r for r in csv.DictReader((ROOT / "data" / "splits" / manifest).open()) if r["split"] == "test"]
        ind += [(ROOT / "data" / "splits" / r["path"]).resolve() for r in rows[:: max(1, len(rows) // 300)]]
    conf = {"in-distribution (PBC + Kaggle test)": np.array([p.max() for _, p in pred.predict_paths(ind)])}
    for kind, paths in sets.items():
        conf[kind] = np.array([p.max() for _, p in pred.predict_paths(paths)])
    ref = conf["in-distribution (PBC + Kaggle test)"]
    result = {"review_threshold": thr, "sets": {}}
    for name, c in conf.items():
        row = {"n": int(len(c)), "median_confidence": float(np.median(c)), "below_threshold": float((c < thr).mean())}
        if not name.startswith("in-distribution"):
            y = np.r_[np.ones(len(ref)), np.zeros(len(c))]
            row["auroc_in_vs_this"] = float(roc_auc_score(y, np.r_[ref, c]))
        result["sets"][name] = row
        print(name, row, flush=True)
    write_json(Path(a.out) / "ood.json", result)


if __name__ == "__main__":
    main()
