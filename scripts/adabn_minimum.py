"""How few unlabelled cells `wbc adapt --unlabelled` may take (validation only; docs/decisions/0008).

    python scripts/adabn_minimum.py [--out results/adabn-minimum]        # ~10 min on 2 cores

The PBC-only robust model (runs/crossdomain/pbc-only-robust, trained by scripts/crossdomain.py) re-estimates
its BatchNorm statistics on k unlabelled images drawn from the Kaggle TRAIN train split (labels ignored;
k = 4 ... 64, three random draws each) and is scored on the Kaggle and PBC val splits: the validation protocol
of `scripts/adapt_curve.py --eval-split val`. To measure below the current minimum, the script lowers
``wbc.adapt.MIN_UNLABELLED`` for its own runs.

The rule, fixed before the first run: ``MIN_UNLABELLED`` is the smallest k at which the mean Kaggle-val balanced
accuracy, at k and at every larger k measured, is at least that of the model before adapting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "runs" / "crossdomain" / "pbc-only-robust"
COUNTS = (4, 8, 16, 32, 64)
RULE = ("MIN_UNLABELLED is the smallest k at which the mean Kaggle-val balanced accuracy after AdaBN on k unlabelled "
        "images, at k and at every larger k measured, is at least that of the model before adapting")


def decide(rows: list[dict]) -> int | None:
    """The smallest count that :data:`RULE` accepts (None: no count does)."""
    before = next(r for r in rows if r["images"] == 0)["kaggle_val_balanced"]
    counts = sorted(r["images"] for r in rows if r["images"] > 0)
    ok = {r["images"]: r["kaggle_val_balanced"] >= before for r in rows if r["images"] > 0}
    return next((k for k in counts if all(ok[j] for j in counts if j >= k)), None)


def main() -> None:
    import numpy as np

    import wbc.adapt
    from wbc.adapt import AdaptConfig, adapt
    from wbc.evaluation import EvalConfig, evaluate
    from wbc.io import write_json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "adabn-minimum"), help="(default: %(default)s)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "adabn-minimum"), help="(default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=3, help="random draws per count (default: 3)")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE}: no such model; run `bash scripts/results.sh crossdomain` first")
    wbc.adapt.MIN_UNLABELLED = 1  # this script measures below the shipped minimum

    def score(model: str, tag: str) -> tuple[float, float]:
        k = evaluate(EvalConfig(data=str(ROOT / "data/splits/kaggle.csv"), model=model, split="val", n_boot=50,
                                out=str(work / tag / "eval-kaggle-val"), progress=False))
        p = evaluate(EvalConfig(data=str(ROOT / "data/splits/pbc.csv"), model=model, split="val", n_boot=50,
                                out=str(work / tag / "eval-pbc-val"), progress=False))
        return k["balanced_accuracy"], p["accuracy"]

    kb, pa = score(str(SOURCE), "before")
    rows = [{"images": 0, "seeds": 1, "kaggle_val_balanced": kb, "pbc_val_accuracy": pa}]
    print(rows[-1], flush=True)
    for k in COUNTS:
        runs = []
        for seed in range(a.seeds):
            tag = f"k{k}-s{seed}"
            adapt(AdaptConfig(data=[], unlabelled=[str(ROOT / "data/splits/kaggle.csv")], split="train",
                              max_unlabelled=k, seed=seed, out=str(work / tag), model=str(SOURCE), progress=False))
            runs.append(score(str(work / tag / "model.safetensors"), tag))
        kb, pa = np.array(runs).T
        rows.append({"images": k, "seeds": a.seeds, "kaggle_val_balanced": float(kb.mean()),
                     "kaggle_val_balanced_sd": float(kb.std()), "pbc_val_accuracy": float(pa.mean()),
                     "pbc_val_accuracy_sd": float(pa.std())})
        print(rows[-1], flush=True)
    write_json(out / "minimum.json", {"source_model": str(SOURCE.relative_to(ROOT)), "rule": RULE, "rows": rows,
                                      "minimum": decide(rows)})
    print(json.dumps({"minimum": decide(rows)}))


if __name__ == "__main__":
    main()
