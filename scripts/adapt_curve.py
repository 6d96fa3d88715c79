"""Accuracy on a new domain before and after `wbc adapt` with 5, 10 and 20 cells per class (issue 7).

    python scripts/adapt_curve.py [--out results/adapt]        # ~5 min on 2 cores

The PBC-only MobileNetV2 of the robust recipe (runs/crossdomain/pbc-only-robust, trained by
scripts/crossdomain.py; `--source` for another) is adapted with cells drawn from Kaggle TRAIN
(one per source cell first; `data/splits/kaggle.csv` split train) and tested on Kaggle TEST, whose
source cells are disjoint from TRAIN, and on the PBC test split (what it knew). Variants: BatchNorm
re-estimation + head re-fit, + head re-fit only when it wins on held-out shots (`--head auto`),
BatchNorm half-way + head, head only, BatchNorm only, three seeds (different shots) each; and
label-free: BatchNorm statistics of 2,000 unlabelled Kaggle TRAIN images.

    python scripts/adapt_curve.py --eval-split val --out results/adapt-val   # the same on the val splits

The val run is where the default of `wbc adapt --head` was chosen (docs/decisions/0008); the test run
reports it once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT.parent / "shared" / "data" / "blood-cells" / "provenance" / "dataset2_source_map.csv"
SOURCE = ROOT / "runs" / "crossdomain" / "pbc-only-robust"
# name: (re-estimate BatchNorm, head mode, BatchNorm mix, shot counts)
ALL = (5, 10, 20)
VARIANTS = {"bn+head": (True, "refit", 1.0, ALL), "bn+auto head": (True, "auto", 1.0, ALL),
            "bn 50/50 + head": (True, "refit", 0.5, (20,)), "head only": (False, "refit", 1.0, (20,)),
            "bn only": (True, "keep", 1.0, (1, 2, 3) + ALL)}  # 1-3: how few cells BatchNorm statistics tolerate


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
    ap.add_argument("--eval-split", choices=("test", "val"), default="test",
                    help="score on the Kaggle and PBC test splits, or on their val splits (default: test)")
    a = ap.parse_args()
    out, work, source = Path(a.out), Path(a.work), str(Path(a.source).resolve())
    if not Path(source).exists():
        raise SystemExit(f"{source}: no such model; run `bash scripts/results.sh crossdomain` first")
    shown = str(Path(source).relative_to(ROOT)) if Path(source).is_relative_to(ROOT) else source

    def score(model: str, tag: str) -> dict:
        k = evaluate(EvalConfig(data=str(ROOT / "data/splits/kaggle.csv"), groups=str(MAP), model=model,
                                split=a.eval_split, out=str(work / tag / f"eval-kaggle-{a.eval_split}"), n_boot=200,
                                progress=False))
        p = evaluate(EvalConfig(data=str(ROOT / "data/splits/pbc.csv"), model=model, split=a.eval_split,
                                out=str(work / tag / f"eval-pbc-{a.eval_split}"), n_boot=200, progress=False))
        return {"kaggle_test_accuracy": k["accuracy"], "kaggle_test_balanced": k["balanced_accuracy"],
                "pbc_test_accuracy": p["accuracy"]}

    done = {}
    if (out / "adapt.json").is_file():  # resume: keep the finished rows of the same source model
        prev = json.loads((out / "adapt.json").read_text())
        if prev["source_model"] == shown and prev.get("eval_split", "test") == a.eval_split:
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
    for name, (bn, head, mix, counts) in VARIANTS.items():
        for shots in counts:
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
            write_json(out / "adapt.json", {"source_model": shown, "eval_split": a.eval_split, "rows": rows})
    write_json(out / "adapt.json", {"source_model": shown, "eval_split": a.eval_split, "rows": rows})
    if a.eval_split == "val":
        write_json(out / "choice.json", head_choice(rows))


RULE = ("`--head auto` becomes the default if, at every shot count, its mean Kaggle-val balanced accuracy is at "
        "least that of re-fitting always, and so is its PBC-val accuracy.")


def head_choice(rows: list[dict]) -> dict:
    """The decision of :data:`RULE` (fixed before the val run) from the val rows."""
    get = {(r["variant"], r["shots"]): r for r in rows}
    per = {n: {"kaggle_balanced": (get[("bn+auto head", n)]["kaggle_test_balanced"],
                                   get[("bn+head", n)]["kaggle_test_balanced"]),
               "pbc": (get[("bn+auto head", n)]["pbc_test_accuracy"], get[("bn+head", n)]["pbc_test_accuracy"])}
           for n in ALL}
    adopted = all(auto >= refit for d in per.values() for auto, refit in d.values())
    return {"rule": RULE, "auto_vs_refit": per,
            "adopted": adopted, "default": "auto" if adopted else "refit"}


if __name__ == "__main__":
    main()
