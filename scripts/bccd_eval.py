"""Measure segmentation, detection and agreement on the BCCD smear fields; write JSON into results/.

    python scripts/bccd_eval.py segmentation|detection|agreement [--out results] [--model M]

Called by scripts/results.sh (steps segmentation, detection, agreement); docs/results.md quotes the output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BCCD = DATA / "BCCD_Dataset" / "BCCD"
MASTER = DATA / "blood-cells" / "dataset-master" / "dataset-master"
PROV = DATA / "blood-cells" / "provenance"


def _write(path: Path, obj: dict) -> None:
    from wbc.io import write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)
    print(f"-> {path}")


def segmentation(out: Path, model: str | None) -> None:
    from wbc.segmentation import evaluate_on_voc
    t0 = time.perf_counter()
    r = evaluate_on_voc(BCCD / "Annotations", BCCD / "JPEGImages", progress=True)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"single-WBC fields {r['single_wbc_fields']}: IoU>=0.5 {r['single_wbc_hit_rate']:.3f} "
          f"(no extra cell {r['single_wbc_exact_rate']:.3f}); all WBCs P {r['precision']:.3f} R {r['recall']:.3f}")
    _write(out / "segmentation" / "bccd.json", r)


def detection(out: Path, model: str | None) -> None:
    from wbc.detection import evaluate_detection
    r = {}
    for pooled in (True, False):
        t0 = time.perf_counter()
        d = evaluate_detection(BCCD / "Annotations", BCCD / "JPEGImages", pooled=pooled, progress=True)
        d["seconds"] = round(time.perf_counter() - t0, 1)
        r["pooled" if pooled else "per_field"] = d
        print(f"pooled={pooled}: precision {d['precision']:.3f} recall {d['recall']:.3f}")
    _write(out / "detection" / "bccd.json", r)


def agreement(out: Path, model: str | None) -> None:
    from wbc.agreement import run_agreement, write_bccd_reference
    from wbc.counting import CountConfig, run_count
    d = out / "agreement"
    d.mkdir(parents=True, exist_ok=True)
    ref = d / "reference.csv"
    n = write_bccd_reference(MASTER / "labels.csv", MASTER / "JPEGImages", ref,
                             PROV / "dataset2_source_map.csv", PROV / "dataset_master_near_duplicates.csv")
    fields = [line.split(",")[0] for line in ref.read_text().splitlines()[1:]]
    t0 = time.perf_counter()
    run_count(CountConfig(inputs=fields, out=str(d / "count"), sample_id="bccd-kaggle-test-sources", model=model,
                          progress=True))
    seconds = time.perf_counter() - t0
    res = run_agreement(ref, d / "count" / "cells.csv", d)
    print(f"{n} fields: kappa {res['kappa']:.3f} {res['kappa_ci95']}, count {seconds:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["segmentation", "detection", "agreement"])
    ap.add_argument("--out", default=str(ROOT / "results"), help="results folder (default: results)")
    ap.add_argument("--model", default=None, help="classifier for agreement (default: the bundled model)")
    a = ap.parse_args()
    globals()[a.what](Path(a.out), a.model)


if __name__ == "__main__":
    main()
