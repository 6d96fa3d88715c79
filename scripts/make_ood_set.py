"""Write a small out-of-distribution (OOD) image set: things that are not a white blood cell (issue 7).

    python scripts/make_ood_set.py OUT_DIR [--per-kind 60] [--seed 0]      # ~5 s, no download
    wbc evaluate-ood --data data/splits/pbc.csv --data data/splits/kaggle.csv --ood OUT_DIR/test --out DIR

OUT_DIR/{val,test}/<kind>/*.png and OUT_DIR/manifest.csv (path,kind,group,split). Kinds:
* ``rbc``: red cells only: windows of the BCCD fields centred on a VOC red-cell box, overlapping no WBC box;
* ``platelet``: the same around platelet boxes (PBC has a platelet class: the model may rightly call
  these "platelet" rather than unknown);
* ``background``: blank background: the emptiest 96 px patch of each field (fewest dark pixels), no WBC in it;
* ``non-microscopy``: synthetic noise, gradients, checkerboards, stripes and text images.
Red-cell and platelet windows cover what `wbc count` cuts around a detection (0.7 x the 480 px short
side, docs/decisions/0011), saved at the Kaggle scale (half the field's resolution). Given to
`wbc predict` as single images they are centred and cropped once more (the model's ``crop``), so
the classifier sees their central 70 %, 1.4x closer than `wbc count` would. ``split``: the fields
(near-duplicate pairs of provenance/dataset_master_near_duplicates.csv kept together) and the
synthetic images are halved into ``val`` (for choosing the score) and ``test`` (for reporting it);
``group`` = the source field. The unknown threshold itself is fitted on in-distribution validation
cells only (`wbc calibrate`), never on these images.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ANN = DATA / "BCCD_Dataset" / "BCCD" / "Annotations"
FIELDS = DATA / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages"
TWINS = DATA / "blood-cells" / "provenance" / "dataset_master_near_duplicates.csv"
KINDS = ("rbc", "platelet", "background", "non-microscopy")
WINDOW = 336  # full-resolution pixels: the classifier's crop of a 640x480 field (0.7 x 480)
PATCH = 96  # blank background patches: smaller, so that some hold plasma alone


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _window(img: Image.Image, cx: float, cy: float) -> tuple[int, int, int, int]:
    """The WINDOW x WINDOW box centred on (cx, cy), shifted to stay inside the image."""
    left = int(min(max(cx - WINDOW / 2, 0), img.width - WINDOW))
    top = int(min(max(cy - WINDOW / 2, 0), img.height - WINDOW))
    return left, top, left + WINDOW, top + WINDOW


def _save(img: Image.Image, box, path: Path) -> Path:
    """The box at the Kaggle scale (half the field's resolution)."""
    side = (box[2] - box[0]) // 2
    img.crop(box).resize((side, side), Image.Resampling.LANCZOS).save(path)
    return path


def _emptiest(img: Image.Image, wbcs) -> tuple[int, int, int, int] | None:
    """The PATCH x PATCH box with the fewest dark (cell) pixels that overlaps no WBC box."""
    grey = np.asarray(img.convert("L"), np.float32)
    best = None
    for top in range(0, img.height - PATCH + 1, 16):
        for left in range(0, img.width - PATCH + 1, 16):
            box = (left, top, left + PATCH, top + PATCH)
            if any(_overlaps(box, w) for w in wbcs):
                continue
            dark = float((grey[top:top + PATCH, left:left + PATCH] < 150).mean())  # cells are darker than plasma
            if best is None or dark < best[0]:
                best = (dark, box)
    return best and best[1]


def synthetic(i: int, rng: np.random.Generator) -> np.ndarray:
    """Image ``i`` of the non-microscopy kind: cycles through noise, gradient, checkerboard, stripes, text."""
    h, w = int(rng.integers(120, 400)), int(rng.integers(120, 400))
    kind = i % 5
    if kind == 0:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == 1:
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        return np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8)
    if kind == 2:
        yy, xx = np.mgrid[:h, :w]
        cell = int(rng.integers(8, 48))
        on = (((yy // cell) + (xx // cell)) % 2).astype(bool)[..., None]
        return np.where(on, rng.integers(0, 256, 3), rng.integers(0, 256, 3)).astype(np.uint8)
    if kind == 3:
        period = int(rng.integers(6, 40))
        wave = (np.sin(np.arange(w) * 2 * np.pi / period) > 0)[None, :, None]
        return np.broadcast_to(np.where(wave, rng.integers(0, 256, 3), rng.integers(0, 256, 3)), (h, w, 3)).astype(np.uint8)
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(150, 256, 3)))
    draw = ImageDraw.Draw(im)
    for line in range(0, h - 12, 16):
        draw.text((6, line + 2), f"Lab report {i}: WBC 7.2 x10^9/L, ref. 4.0-10.0"[: w // 6], fill=(0, 0, 0))
    return np.asarray(im)


def field_groups() -> dict[str, str]:
    """Field stem -> group: a near-duplicate pair (the same cell photographed twice) is one group."""
    groups: dict[str, str] = {}
    if TWINS.is_file():
        with TWINS.open() as fh:
            for r in csv.DictReader(fh):
                a, b = sorted((r["image_a"], r["image_b"]))
                groups[b] = groups.get(a, a)
    return groups


def build(out: Path, per_kind: int = 60, seed: int = 0) -> list[dict]:
    """Write ``per_kind`` images of every kind into ``out/{val,test}/<kind>/``; return the manifest rows."""
    if not ANN.is_dir() or not FIELDS.is_dir():
        raise SystemExit(f"BCCD fields or annotations missing under {DATA}")
    from wbc.detection import voc_boxes
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {k: [] for k in KINDS}
    for split in ("val", "test"):
        for k in KINDS:
            (out / split / k).mkdir(parents=True, exist_ok=True)
    twins = field_groups()
    xmls = sorted(ANN.glob("*.xml"))
    rng.shuffle(xmls)
    for xml in xmls:
        if all(len(rows[k]) >= per_kind for k in KINDS[:3]):
            break
        field = FIELDS / f"{xml.stem}.jpg"
        if not field.is_file():
            continue
        img = Image.open(field).convert("RGB")
        wbcs = voc_boxes(xml, "WBC")
        group = twins.get(xml.stem, xml.stem)
        split = "val" if int(group.rsplit("_", 1)[-1]) % 2 == 0 else "test"
        for kind, name in (("rbc", "RBC"), ("platelet", "Platelets")):
            if len(rows[kind]) >= per_kind:
                continue
            boxes = voc_boxes(xml, name)
            rng.shuffle(boxes)
            for b in boxes:  # one window per field and kind: more fields, more variety
                box = _window(img, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
                if not any(_overlaps(box, w) for w in wbcs):
                    path = _save(img, box, out / split / kind / f"{xml.stem}_{b[0]}_{b[1]}.png")
                    rows[kind].append({"path": path, "kind": kind, "group": group, "split": split})
                    break
        if len(rows["background"]) < per_kind and (box := _emptiest(img, wbcs)) is not None:
            path = _save(img, box, out / split / "background" / f"{xml.stem}.png")
            rows["background"].append({"path": path, "kind": "background", "group": group, "split": split})
    gen = np.random.default_rng(seed)
    for i in range(per_kind):
        split = "val" if i // 5 % 2 == 0 else "test"  # every pattern in both halves
        path = out / split / "non-microscopy" / f"synthetic_{i:03d}.png"
        Image.fromarray(synthetic(i, gen)).save(path)
        rows["non-microscopy"].append({"path": path, "kind": "non-microscopy", "group": path.stem, "split": split})
    flat = [{**r, "path": str(Path(r["path"]).resolve())} for k in KINDS for r in rows[k]]
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "kind", "group", "split"])
        w.writeheader()
        w.writerows(flat)
    return flat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to write (e.g. runs/ood, which git ignores)")
    ap.add_argument("--per-kind", type=int, default=60, help="images per kind (default: 60)")
    ap.add_argument("--seed", type=int, default=0, help="(default: 0)")
    a = ap.parse_args(argv)
    rows = build(Path(a.out), a.per_kind, a.seed)
    counts = {k: sum(r["kind"] == k for r in rows) for k in KINDS}
    n_val = sum(r["split"] == "val" for r in rows)
    print(f"{len(rows)} images ({', '.join(f'{k} {n}' for k, n in counts.items())}; {n_val} val, "
          f"{len(rows) - n_val} test) -> {Path(a.out) / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
