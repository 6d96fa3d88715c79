"""Accuracy on a new domain before and after `wbc adapt` with 5, 10 and 20 cells per class (issue 7).

    python scripts/adapt_curve.py [--out results/adapt]        # ~5 min on 2 cores

The PBC-only MobileNetV2 of the robust recipe (runs/crossdomain/pbc-only-robust, trained by
scripts/crossdomain.py; `--source` for another) is adapted with cells drawn from Kaggle TRAIN
(one per source cell first; `data/splits/kaggle.csv` split train) and tested on Kaggle TEST, whose
source cells are disjoint from TRAIN, and on the PBC test split (what it knew). Variants: BatchNorm
re-estimation + head (the default), BatchNorm half-way + head, head only, BatchNorm only, three seeds
(different shots) each; and label-free: BatchNorm statistics of 2,000 unlabelled Kaggle TRAIN images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT.parent / "shared" / "data" / "blood-cells" / "provenance" / "dataset2_source_map.csv"
SOURCE = ROOT / "runs" / "crossdomain" / "pbc-only-robust"
VARIANTS = {"bn+head": (True, True, 1.0), "bn 50/50 + head": (True, True, 0.5), "head only": (False, True, 1.0),
            "bn only": (True, False, 1.0)}


def main() -> None:
    import numpy as np

    from wbc.adapt import AdaptConfig, adapt
    from wbc.evaluation import EvalConfig, evaluate
    from wbc.io import write_json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "adapt"), help="(default: results/adapt)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "adapt"), help="adapted models (default: runs/adapt)")
    ap.add_argument("--seeds", type=int, default=3, help="(default: 3)")
    ap.add_argument("--source", default=str(SOURCE), help="the model adapted (default: %(default)s)")
    a = ap.parse_args()
    out, work, source = Path(a.out), Path(a.work), str(Path(a.source).resolve())
    if not Path(source).exists():
        raise SystemExit(f"{source}: no such model; run `bash scripts/results.sh crossdomain` first")
    shown = str(Path(source).relative_to(ROOT)) if Path(source).is_relative_to(ROOT) else source

    def score(model: str, tag: str) -> dict:
        k = evaluate(EvalConfig(data=str(ROOT / "data/splits/kaggle.csv"), groups=str(MAP), model=model,
                                out=str(work / tag / "eval-kaggle"), n_boot=200, progress=False))
        p = evaluate(EvalConfig(data=str(ROOT / "data/splits/pbc.csv"), model=model, out=str(work / tag / "eval-pbc"),
                                n_boot=200, progress=False))
        return {"kaggle_test_accuracy": k["accuracy"], "kaggle_test_balanced": k["balanced_accuracy"],
                "pbc_test_accuracy": p["accuracy"]}

    done = {}
    if (out / "adapt.json").is_file():  # resume: keep the finished rows of the same source model
        prev = json.loads((out / "adapt.json").read_text())
        if prev["source_model"] == shown:
            done = {(r["variant"], r["shots"]): r for r in prev["rows"]}
    rows = [done.get(("before", 0)) or {"variant": "before", "shots": 0, "seeds": 1, **score(source, "before")}]
    print(rows[-1], flush=True)
    if ("bn, unlabelled", 0) in done:
        rows.append(done[("bn, unlabelled", 0)])
    else:
        adapt(AdaptConfig(data=[], unlabelled=[str(ROOT / "data/splits/kaggle.csv")], split="train",  # labels ignored
                          out=str(work / "bn-unlabelled"), model=source, progress=False))
        rows.append({"variant": "bn, unlabelled", "shots": 0, "seeds": 1,
                     **score(str(work / "bn-unlabelled"), "bn-unlabelled")})
    print(rows[-1], flush=True)
    for name, (bn, head, mix) in VARIANTS.items():
        for shots in (5, 10, 20):
            if name != "bn+head" and shots != 20:
                continue  # the ablations at 20 cells per class only
            if (name, shots) in done:
                rows.append(done[(name, shots)])
                continue
            runs = []
            for seed in range(a.seeds):
                tag = f"{name.replace(' ', '_').replace('+', '_')}-{shots}-s{seed}"
                adapt(AdaptConfig(data=[str(ROOT / "data/splits/kaggle.csv")], split="train", groups=str(MAP),
                                  out=str(work / tag), model=source, shots=shots, bn=bn, bn_mix=mix, head=head, seed=seed,
                                  progress=False))
                runs.append(score(str(work / tag), tag))
            row = {"variant": name, "shots": shots, "seeds": a.seeds}
            for key in runs[0]:
                vals = np.array([r[key] for r in runs])
                row[key], row[key + "_sd"] = float(vals.mean()), float(vals.std())
            rows.append(row)
            print(row, flush=True)
            write_json(out / "adapt.json", {"source_model": shown, "rows": rows})
    write_json(out / "adapt.json", {"source_model": shown, "rows": rows})


if __name__ == "__main__":
    main()
