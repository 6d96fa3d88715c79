"""Benchmark of ``wbc count``: ms per 640x480 BCCD field and per large (4000x3000) image, end to end.

    nice -n 19 python bench/bench_count.py [--fields 40] [--large 2] [--threads 2] [--json out.json]

End to end = what ``wbc count`` does for a sample: read and check every field, estimate the
magnification, detect, classify (bundled model), draw ``annotated/<stem>.png``, write
``cells.csv``, ``differential.json`` and ``report.html``. The per-stage figures are measured
separately on the same decoded fields. The large image is a 4000x3000 mosaic of real BCCD fields
(BCCD magnification, ~50 WBCs), processed in tiles. Wall and CPU time are both reported: on a
shared machine the wall time includes waiting for the CPU, the CPU time does not. Model loading
is not counted (it happens once per run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, machine_info, spread  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIELDS = SHARED / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages"


def mosaic(paths: list[Path], width: int = 4000, height: int = 3000) -> np.ndarray:
    from wbc.data import load_image
    tiles = [np.asarray(load_image(p)) for p in paths]
    rows, k = [], 0
    for _ in range(-(-height // 480)):
        row = []
        for _ in range(-(-width // 640)):
            row.append(tiles[k % len(tiles)])
            k += 1
        rows.append(np.hstack(row))
    return np.ascontiguousarray(np.vstack(rows)[:height, :width])


def bench(n_fields: int, n_large: int, threads: int | None) -> dict:
    from PIL import Image

    from wbc.counting import CellRecord, CountConfig, Sample, annotate_field, classify_cells, count_sample
    from wbc.data import load_image
    from wbc.detection import REFERENCE_RBC_PX, detect_wbcs, estimate_rbc_diameter, field_quality
    from wbc.inference import load_predictor

    paths = spread(sorted(FIELDS.glob("*.jpg")), n_fields)
    with Clock() as c_load:
        predictor = load_predictor(None, threads=threads)
    images = [np.asarray(load_image(p)) for p in paths]
    classify_cells(predictor, Image.fromarray(images[0]), detect_wbcs(images[0]).cells, REFERENCE_RBC_PX)  # warm-up

    stages: dict[str, Clock] = {}
    n_cells = 0
    with Clock() as stages["read"]:
        for p in paths:
            load_image(p)
    with Clock() as stages["quality+scale"]:
        for rgb in images:
            field_quality(rgb)
            estimate_rbc_diameter(rgb)
    with Clock() as stages["detect"]:
        results = [detect_wbcs(rgb, rbc_px=REFERENCE_RBC_PX, check_quality=False) for rgb in images]
    with Clock() as stages["classify"]:
        probs = [classify_cells(predictor, Image.fromarray(rgb), r.cells, REFERENCE_RBC_PX)
                 for rgb, r in zip(images, results)]
    n_cells = sum(len(r.cells) for r in results)
    with Clock() as stages["annotate"]:
        for rgb, r, pr in zip(images, results, probs):
            recs = [CellRecord("x", i, c.box, predictor.classes[int(np.argmax(p))], float(p.max()), False, "", False,
                               {}) for i, (c, p) in enumerate(zip(r.cells, pr))]
            annotate_field(rgb, r.cells, recs, predictor.classes)

    out = {"machine": machine_info(), "model_load_s": round(c_load.wall, 2), "fields": len(paths), "cells": n_cells,
           "stages_ms_per_field": {k: {"wall": round(1000 * v.wall / len(paths), 1),
                                       "cpu": round(1000 * v.cpu / len(paths), 1)} for k, v in stages.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CountConfig(inputs=[str(p) for p in paths], out=tmp)
        with Clock() as e2e:
            res = count_sample(Sample("bench", paths), Path(tmp), predictor, cfg)
        out["end_to_end_ms_per_field"] = {"wall": round(1000 * e2e.wall / len(paths), 1),
                                          "cpu": round(1000 * e2e.cpu / len(paths), 1),
                                          "cells": res.differential.n_cells}
        large = []
        for i in range(n_large):
            img = mosaic(spread(sorted(FIELDS.glob("*.jpg")), 64)[i::2] or paths)
            lp = Path(tmp) / f"large_{i}.png"
            Image.fromarray(img).save(lp)
            with Clock() as c:
                r = count_sample(Sample(f"large{i}", [lp]), Path(tmp) / f"large{i}", predictor,
                                 CountConfig(inputs=[str(lp)], out=str(Path(tmp) / f"large{i}")))
            large.append({"wall_ms": round(1000 * c.wall), "cpu_ms": round(1000 * c.cpu), "size": list(img.shape[:2]),
                          "cells": len(r.cells)})
        out["large_4000x3000"] = large
    out["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=40, help="BCCD fields (default: 40)")
    ap.add_argument("--large", type=int, default=2, help="4000x3000 mosaics (default: 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if not FIELDS.is_dir():
        print(f"needs the BCCD fields at {FIELDS}", file=sys.stderr)
        return 1
    res = bench(args.fields, args.large, args.threads)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
