"""Benchmark of the classical path: segmentation time per smear field and feature-extraction throughput.

    nice -n 19 python bench/bench_classical.py [--fields 40] [--crops 120] [--workers 1] [--json out.json]

Segmentation runs on BCCD smear fields (640x480, ../shared/data), features on PBC (360x363)
and Kaggle (320x240) single-cell crops. Wall and CPU time are both reported: on a shared
machine the wall time includes waiting for the CPU, the CPU time does not. Images are decoded
before the clock starts (decoding is not part of the measured step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, machine_info, spread  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BCCD_IMAGES = SHARED / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages"
PBC = SHARED / "PBC_dataset_normal_DIB"
KAGGLE = SHARED / "blood-cells" / "dataset2-master" / "dataset2-master" / "images" / "TEST"


def bench_segmentation(n: int) -> dict:
    from wbc.data import load_image
    from wbc.segmentation import segment_cells
    paths = spread(sorted(BCCD_IMAGES.glob("*.jpg")), n)
    images = [np.asarray(load_image(p)) for p in paths]
    segment_cells(images[0])  # warm-up (imports, allocations)
    wall, cpu = time.perf_counter(), time.process_time()
    cells = sum(segment_cells(im).n_cells for im in images)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"fields": len(images), "size": f"{images[0].shape[1]}x{images[0].shape[0]}", "cells_found": cells,
            "ms_per_field_wall": round(1000 * wall / len(images), 1),
            "ms_per_field_cpu": round(1000 * cpu / len(images), 1)}


def bench_features(name: str, paths: list[Path], workers: int) -> dict:
    from wbc.data import load_image
    from wbc.features import FeatureConfig, extract_matrix, image_features
    images = [np.asarray(load_image(p)) for p in paths]
    cfg = FeatureConfig()
    image_features(images[0], cfg)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    failed = 0
    for im in images:
        try:
            image_features(im, cfg)
        except ValueError:
            failed += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = {"dataset": name, "cells": len(images), "no_cell_found": failed,
           "cells_per_second_wall": round(len(images) / wall, 2), "cells_per_second_cpu": round(len(images) / cpu, 2)}
    if workers > 1:  # end to end from files (decoding included), in a process pool
        t = time.perf_counter()
        extract_matrix(paths, cfg, workers=workers, progress=False)
        out[f"cells_per_second_files_{workers}_workers"] = round(len(paths) / (time.perf_counter() - t), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fields", type=int, default=40, help="BCCD smear fields to segment (default: 40)")
    ap.add_argument("--crops", type=int, default=120, help="crops per dataset for feature extraction (default: 120)")
    ap.add_argument("--workers", type=int, default=1, help="also time a process pool of this size (default: 1)")
    ap.add_argument("--json", help="also write the results to this JSON file (default: none)")
    args = ap.parse_args(argv)
    if not PBC.is_dir():
        print(f"needs the datasets in {SHARED}", file=sys.stderr)
        return 2
    import cv2
    cv2.setNumThreads(1)  # one core per process, like the feature workers
    result = {"machine": machine_info(), "segmentation": bench_segmentation(args.fields), "features": [
        bench_features("PBC 360x363", spread(sorted(PBC.glob("*/*.jpg")), args.crops), args.workers),
        bench_features("Kaggle 320x240", spread(sorted(KAGGLE.glob("*/*.jpeg")), args.crops), args.workers)]}
    m, s = result["machine"], result["segmentation"]
    print(f"machine: {m['cpu']} ({m['logical_cores']} logical cores), {m['platform']}, Python {m['python']}, "
          f"OpenCV {m['opencv']}, scikit-image {m['scikit-image']}; load average {m['load_average_1m']}")
    print(f"segmentation: {s['ms_per_field_cpu']} ms CPU ({s['ms_per_field_wall']} ms wall) per {s['size']} smear "
          f"field, {s['fields']} fields, {s['cells_found']} WBCs found")
    for f in result["features"]:
        extra = {k: v for k, v in f.items() if k.startswith("cells_per_second_files")}
        print(f"features {f['dataset']}: {f['cells_per_second_cpu']} cells/s per core (CPU time), "
              f"{f['cells_per_second_wall']} cells/s wall, {f['cells']} cells, {f['no_cell_found']} without a cell"
              + (f", {extra}" if extra else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
