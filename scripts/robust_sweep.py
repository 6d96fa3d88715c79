"""Choose the training recipe for robustness across labs by measurement, on validation data only (issue 7).

    python scripts/robust_sweep.py [--out results/robust-sweep] [--work runs/robust-sweep] [--recipes a,b]

For every recipe (augmentation preset x per-image colour normalisation, plus MixStyle, JPEG re-compression
or the EfficientNet-Lite0 backbone where the recipe says so) it trains two MobileNetV2s at a small budget
(128 px, 4 epochs, ImageNet start, WBC-centred crop 0.7, one-cycle Adam 3e-4, class weights):
* **PBC-only** (PBC train split), validated *cross-domain* on Kaggle TRAIN (all 277 source cells; never
  on Kaggle TEST);
* **Kaggle-only** (Kaggle TRAIN train split, <= 1,000 images per class), validated cross-domain on the
  PBC validation split restricted to the four Kaggle classes (never on the PBC test split);
and reports balanced accuracy in both cross-domain directions, with and without test-time BatchNorm
re-estimation on unlabelled images of the target lab (AdaBN, Li et al. 2016: statistics from the other
half of the target's data — Kaggle val split / PBC train split — never from the images scored), plus the
in-domain validation accuracy. Predictions are restricted to the four shared classes.

The recipe with the best mean cross-domain balanced accuracy (AdaBN off: what a user gets without
adapting) is the one docs/decisions/0014-robust-recipe.md adopts for the bundled model.
:data:`RULES`, fixed before their candidate rows were scored, decide which variants the cross-domain models
of scripts/crossdomain.py are trained with (results/robust-sweep/*-choice.json).
Resumable: finished runs are reused; ~7 min per recipe on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from wbc.adapt import reestimate_batchnorm  # noqa: E402
from wbc.augment import model_input  # noqa: E402
from wbc.data import discover  # noqa: E402
from wbc.imageset import decode_images  # noqa: E402
from wbc.modelio import load_model  # noqa: E402
from wbc.training import TrainConfig, predict_logits, train  # noqa: E402

KAGGLE4 = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
PBC = ROOT / "data/splits/pbc.csv"
KAGGLE = ROOT / "data/splits/kaggle.csv"
MAP = ROOT.parent / "shared/data/blood-cells/provenance/dataset2_source_map.csv"

#: name -> (augmentation preset, per-image colour normalisation)
RECIPES = {
    "standard": ("standard", None),
    "robust": ("robust", None),
    "standard+background": ("standard", "background"),
    "robust+background": ("robust", "background"),
    "robust+reinhard": ("robust", "reinhard"),
    "robust+macenko": ("robust", "macenko"),
    "robust+reinhard+mixstyle": ("robust", "reinhard"),
    "robust+reinhard+mixstyle+effnet": ("robust", "reinhard"),
    "robust+reinhard+mixstyle+jpeg": ("robust-jpeg", "reinhard"),
}
#: training options beyond the recipe's augmentation and colour normalisation (MixStyle at the paper's p, alpha;
#: the EfficientNet-Lite0 backbone, the other one with ImageNet weights offline)
EXTRA = {"robust+reinhard+mixstyle": {"mixstyle": 0.5},
         "robust+reinhard+mixstyle+effnet": {"mixstyle": 0.5, "arch": "efficientnet_lite0"},
         "robust+reinhard+mixstyle+jpeg": {"mixstyle": 0.5}}
BUDGET = dict(arch="mobilenet_v2", img_size=128, epochs=4, lr=3e-4, schedule="onecycle", class_weights=True,
              patience=4, seed=0)


def sweep_dirs(description: str, out: str) -> tuple[Path, Path]:
    """``--out`` (default ``out`` under the repo) and ``--work`` (default runs/crossdomain) of a validation
    sweep on the cross-domain models; torch on 2 threads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=str(ROOT / out))
    ap.add_argument("--work", default=str(ROOT / "runs/crossdomain"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    return Path(a.out), Path(a.work)


def records(manifest: Path, split: str, classes=None):
    recs = discover(str(manifest), str(MAP) if manifest == KAGGLE else None).split(split).records
    return [r for r in recs if classes is None or r.label in classes]


def score(net, info, recs, bn_recs=None) -> dict:
    """Accuracy and balanced accuracy over the shared classes of ``recs`` (restricted predictions)."""
    pre = info.preprocess
    x, recs = decode_images(recs, pre, progress=False)
    net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    if bn_recs is not None:
        xb, _ = decode_images(bn_recs, pre, progress=False)
        reestimate_batchnorm(net, model_input(torch.from_numpy(xb), pre.mean, pre.std))
    logits = predict_logits(net, torch.from_numpy(x), pre).numpy()
    present = sorted({r.label for r in recs})
    cols = [info.classes.index(c) for c in present]
    y = np.array([present.index(r.label) for r in recs])
    pred = logits[:, cols].argmax(1)
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "n": len(y)}


def run(name: str, work: Path) -> dict:
    preset, norm = RECIPES[name]
    pre = {"crop": 0.7, **({"stain_norm": norm} if norm else {})}
    out = {"recipe": name, "augment": preset, "stain_norm": norm}
    for side, data, extra in (("pbc-only", [str(PBC)], {}),
                              ("kaggle-only", [str(KAGGLE)], {"groups": str(MAP), "max_per_class": 1000})):
        run_dir = work / f"{side}__{name}"
        if not (run_dir / "run.json").is_file():
            train(TrainConfig(data=data, out=str(run_dir), augment_preset=preset, preprocess=pre, progress=False,
                              resume=(run_dir / "checkpoint.pt").is_file(),
                              **{**BUDGET, **extra, **EXTRA.get(name, {})}))
        net, info = load_model(run_dir / "model.safetensors")
        res = json.loads((run_dir / "run.json").read_text())["result"]
        out[f"{side}_wall_s"] = res["wall_seconds"]
        if side == "pbc-only":
            out["pbc-only_in_domain"] = score(net, info, records(PBC, "val"))
            target = records(KAGGLE, "train")  # Kaggle TRAIN minus its val split: 241 source cells
            out["pbc-only_to_kaggle"] = score(net, info, target)
            out["pbc-only_to_kaggle_adabn"] = score(net, info, target, records(KAGGLE, "val"))
        else:
            out["kaggle-only_in_domain"] = score(net, info, records(KAGGLE, "val"))
            target = records(PBC, "val", KAGGLE4)
            out["kaggle-only_to_pbc"] = score(net, info, target)
            out["kaggle-only_to_pbc_adabn"] = score(net, info, target, records(PBC, "train"))
        print(json.dumps({k: v for k, v in out.items() if side in k}), flush=True)
    out["cross_domain_mean"] = (out["pbc-only_to_kaggle"]["balanced_accuracy"]
                                + out["kaggle-only_to_pbc"]["balanced_accuracy"]) / 2
    out["cross_domain_mean_adabn"] = (out["pbc-only_to_kaggle_adabn"]["balanced_accuracy"]
                                      + out["kaggle-only_to_pbc_adabn"]["balanced_accuracy"]) / 2
    return out


#: Rules that decide, on this sweep's validation rows, what the cross-domain models of scripts/crossdomain.py
#: train with. Each was fixed before its candidate row was (fully) scored: MixStyle's after its PBC-only side
#: had printed, before its Kaggle-only side; the backbone's and JPEG's before either side was trained. Those two
#: need a margin because a second seed alone moved one direction by up to 9 points (docs/decisions/0014).
def _rule(what: str, base: str, candidate: str, margin: float, **options) -> dict:
    """A rule of :data:`RULES`: ``what`` is done (with training ``options``) if ``candidate`` beats ``base``'s mean
    cross-domain balanced accuracy by more than ``margin`` and loses at most 1 point of PBC val accuracy."""
    gain = f" + {margin:.2f}" if margin else ""
    return dict(base=base, candidate=candidate, margin=margin, options=options,
                rule=f"{what} if {candidate}'s mean cross-domain balanced accuracy (AdaBN off) > {base}'s{gain} and "
                     f"its PBC val accuracy (in-domain) >= {base}'s - 0.01")


RULES = {  # name -> rule; its decision is written to results/robust-sweep/<name>-choice.json
    "mixstyle": _rule("adopt MixStyle (p 0.5) for the cross-domain models", "robust+reinhard",
                      "robust+reinhard+mixstyle", 0.0, mixstyle=0.5),
    "backbone": _rule("train EfficientNet-Lite0 cross-domain models (with MixStyle)", "robust+reinhard+mixstyle",
                      "robust+reinhard+mixstyle+effnet", 0.03, mixstyle=0.5, arch="efficientnet_lite0"),
    "jpeg": _rule("train the cross-domain models with JPEG re-compression as well (augmentation robust-jpeg)",
                  "robust+reinhard+mixstyle", "robust+reinhard+mixstyle+jpeg", 0.03, mixstyle=0.5,
                  augment_preset="robust-jpeg"),
}


def choice(rows: dict[str, dict], rule: dict) -> dict | None:
    """One of :data:`RULES` applied to the sweep's rows (None until both of its rows exist)."""
    base, cand = rows.get(rule["base"]), rows.get(rule["candidate"])
    if base is None or cand is None:
        return None
    adopted = (cand["cross_domain_mean"] > base["cross_domain_mean"] + rule["margin"]
               and cand["pbc-only_in_domain"]["accuracy"] >= base["pbc-only_in_domain"]["accuracy"] - 0.01)
    return {"adopted": bool(adopted), "rule": rule["rule"], **rule["options"],
            "cross_domain_mean": {rule["base"]: base["cross_domain_mean"],
                                  rule["candidate"]: cand["cross_domain_mean"]},
            "pbc_val_accuracy": {rule["base"]: base["pbc-only_in_domain"]["accuracy"],
                                 rule["candidate"]: cand["pbc-only_in_domain"]["accuracy"]}}


def markdown(rows: list[dict]) -> str:
    pct = lambda d: f"{100 * d['balanced_accuracy']:.1f}"  # noqa: E731
    lines = ["| recipe | PBC-only → Kaggle TRAIN | + AdaBN | Kaggle-only → PBC val (4 cl.) | + AdaBN | mean | mean + AdaBN "
             "| PBC val acc (in-domain) | Kaggle val acc (in-domain) |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['recipe']} | {pct(r['pbc-only_to_kaggle'])} | {pct(r['pbc-only_to_kaggle_adabn'])} | "
                     f"{pct(r['kaggle-only_to_pbc'])} | {pct(r['kaggle-only_to_pbc_adabn'])} | "
                     f"{100 * r['cross_domain_mean']:.1f} | {100 * r['cross_domain_mean_adabn']:.1f} | "
                     f"{100 * r['pbc-only_in_domain']['accuracy']:.1f} | {100 * r['kaggle-only_in_domain']['accuracy']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results/robust-sweep"))
    ap.add_argument("--work", default=str(ROOT / "runs/robust-sweep"))
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of: " + ", ".join(RECIPES))
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    done = out / "sweep.json"
    rows = {r["recipe"]: r for r in json.loads(done.read_text())} if done.is_file() else {}
    for name in args.recipes.split(","):
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
        rows[name] = run(name, work)
        ordered = [rows[k] for k in RECIPES if k in rows]
        done.write_text(json.dumps(ordered, indent=1))
        (out / "sweep.md").write_text(markdown(ordered))
    for name, rule in RULES.items():
        decided = choice(rows, rule)
        if decided is not None:
            (out / f"{name}-choice.json").write_text(json.dumps(decided, indent=1))
    print((out / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
