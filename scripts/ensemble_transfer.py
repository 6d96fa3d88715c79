"""Does an ensemble of two seeds transfer better across labs? Measured on validation data only (issue 7).

    python scripts/ensemble_transfer.py [--out results/ensemble-transfer] [--work runs/crossdomain]   # ~20 min

Needs the robust single-source models of scripts/crossdomain.py (seed 0, in --work). Trains their seed-1
twins with the same recipe and budget, combines each pair with `wbc ensemble` (the mean of the logits,
docs/decisions/0015), and scores seed 0, seed 1 and the pair with the validation protocol of
scripts/robust_sweep.py: PBC-only models on Kaggle TRAIN's train split (241 source cells, never Kaggle
TEST), Kaggle-only models on the PBC validation split (four shared classes, never PBC test); with and
without AdaBN (BatchNorm statistics from the target's other half: Kaggle val split / PBC train split).

Rule, fixed before the run: if the pair's cross-domain balanced accuracy beats seed 0's in both
directions with AdaBN off, the pairs get rows on the test sets in scripts/crossdomain.py. It did not
(PBC-only: 72.9 % against 73.6 %), so they have none; the validation table is in docs/results.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from crossdomain import ROBUST  # noqa: E402
from robust_sweep import KAGGLE, KAGGLE4, MAP, PBC, records, score, sweep_dirs  # noqa: E402

from wbc.modelio import combine_models, load_model  # noqa: E402
from wbc.training import TrainConfig, train  # noqa: E402

SIDES = {  # side: (training data, extra config, validation target, AdaBN images)
    "pbc-only": ([str(PBC)], {}, lambda: records(KAGGLE, "train"), lambda: records(KAGGLE, "val")),
    "kaggle-only": ([str(KAGGLE)], {"groups": str(MAP), "max_per_class": 1000},
                    lambda: records(PBC, "val", KAGGLE4), lambda: records(PBC, "train")),
}


def pair(side: str, work: Path) -> dict[str, Path]:
    """Seed 0 (from crossdomain.py), seed 1 (trained here) and their ensemble."""
    data, extra, *_ = SIDES[side]
    s0, s1 = work / f"{side}-robust", work / f"{side}-robust-s1"
    if not (s0 / "run.json").is_file():
        raise SystemExit(f"{s0}: run `bash scripts/results.sh crossdomain` first")
    if not (s1 / "run.json").is_file():
        train(TrainConfig(data=data, out=str(s1), progress=False, resume=(s1 / "checkpoint.pt").is_file(),
                          **{**ROBUST, "seed": 1}, **extra))
    ens = work / f"{side}-robust-ens.safetensors"
    if not ens.is_file():
        combine_models([s0, s1], ens)
    return {"seed 0": s0 / "model.safetensors", "seed 1": s1 / "model.safetensors", "ensemble": ens}


def main() -> int:
    out, work = sweep_dirs(__doc__.split("\n")[0], "results/ensemble-transfer")
    rows = []
    for side, (_, _, target, bn) in SIDES.items():
        for name, path in pair(side, work).items():
            net, info = load_model(path)
            rows.append({"side": side, "model": name, "plain": score(net, info, target()),
                         "adabn": score(net, info, target(), bn())})
            print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(rows, indent=1))
    pct = lambda d: f"{100 * d['balanced_accuracy']:.1f}"  # noqa: E731
    md = ["| trained on | model | cross-domain balanced acc % (validation) | + AdaBN |", "|---|---|---|---|"]
    md += [f"| {r['side']} | {r['model']} | {pct(r['plain'])} | {pct(r['adabn'])} |" for r in rows]
    (out / "transfer.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
