"""Label-free adaptation beyond AdaBN: does self-training (SHOT) help across labs? Validation data only (issue 7).

    python scripts/selftrain_sweep.py [--out results/selftrain-sweep] [--work runs/crossdomain]   # ~15 min

Needs the robust single-source models of scripts/crossdomain.py (seed 0, in --work). Adapts each one with
`wbc adapt --unlabelled` on the target lab's images that are never scored, with the validation protocol of
scripts/robust_sweep.py and scripts/ensemble_transfer.py:
* PBC-only model: unlabelled Kaggle TRAIN val split (36 source cells), scored on the Kaggle TRAIN train split
  (241 other source cells; never Kaggle TEST);
* Kaggle-only model: unlabelled PBC train split, scored on the PBC validation split (never PBC test);
always the four shared classes (``--classes``; the lab's cells are of the model's WBC types). Variants: AdaBN
alone (BatchNorm statistics only) and AdaBN followed by 2 or 4 epochs of self-training.

Rule, fixed before the run: the variant with the best mean balanced accuracy of the two directions is
adopted for `wbc adapt --self-train` rows on the test sets (scripts/crossdomain.py) if it beats AdaBN alone
in both directions; otherwise AdaBN stays the label-free method and the table says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from crossdomain import unlabelled_manifest  # noqa: E402
from robust_sweep import KAGGLE, KAGGLE4, PBC, records, score, sweep_dirs  # noqa: E402

from wbc.adapt import AdaptConfig, adapt  # noqa: E402
from wbc.modelio import load_model  # noqa: E402

SIDES = {  # side: (validation target, the lab's unlabelled images: manifest and split)
    "pbc-only": (lambda: records(KAGGLE, "train"), (KAGGLE, "val")),
    "kaggle-only": (lambda: records(PBC, "val", KAGGLE4), (PBC, "train")),
}
VARIANTS = {"adabn": 0, "self-train 2": 2, "self-train 4": 4}


def main() -> int:
    out, work = sweep_dirs(__doc__.split("\n")[0], "results/selftrain-sweep")
    rows = []
    for side, (target, unlabelled) in SIDES.items():
        source = work / f"{side}-robust"
        if not (source / "run.json").is_file():
            raise SystemExit(f"{source}: run `bash scripts/results.sh crossdomain` first")
        man = unlabelled_manifest(*unlabelled, work / "selftrain" / f"{side}-unlabelled.csv")
        for name, epochs in VARIANTS.items():
            run = work / "selftrain" / f"{side}__{name.replace(' ', '')}"
            if not (run / "adapt.json").is_file():
                adapt(AdaptConfig(data=[], unlabelled=[str(man)], out=str(run), model=str(source), max_unlabelled=2000,
                                  self_train=epochs, classes=list(KAGGLE4), progress=False))
            net, info = load_model(run / "model.safetensors")
            s = json.loads((run / "adapt.json").read_text())
            rows.append({"side": side, "variant": name, "unlabelled_images": s["unlabelled_images"],
                         "adapt_seconds": s["seconds"], **score(net, info, target())})
            print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    get = {(r["side"], r["variant"]): r["balanced_accuracy"] for r in rows}
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    md = ["| label-free adaptation | PBC-only → Kaggle TRAIN | Kaggle-only → PBC val (4 cl.) | mean | adapt time (s) |",
          "|---|---|---|---|---|"]
    for name in VARIANTS:
        p, k = get[("pbc-only", name)], get[("kaggle-only", name)]
        secs = "/".join(f"{r['adapt_seconds']:.0f}" for r in rows if r["variant"] == name)
        md.append(f"| {name} | {pct(p)} | {pct(k)} | {pct((p + k) / 2)} | {secs} |")
    best = max(VARIANTS, key=lambda n: get[("pbc-only", n)] + get[("kaggle-only", n)])
    adopted = best != "adabn" and all(get[(s, best)] > get[(s, "adabn")] for s in SIDES)
    md.append(f"\nBest mean: {best}; {'adopted' if adopted else 'not adopted'} for test rows (rule: beat AdaBN "
              "alone in both directions).")
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    (out / "choice.json").write_text(json.dumps({"best": best, "epochs": VARIANTS[best], "adopted": adopted}))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
