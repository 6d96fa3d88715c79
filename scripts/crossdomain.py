"""Cross-domain evaluation (issue 7): models trained on one source, tested on the other.

    python scripts/crossdomain.py [--out results/crossdomain] [--work runs/crossdomain]     # ~20 min

Builds two test sets outside the repository (in --work) and evaluates every (model, test set) pair
with `wbc evaluate` (predictions restricted to the test set's classes):
* Kaggle TEST (augmented copies of 68 source cells) and TEST_SIMPLE (the un-augmented TEST sources, one
  image per source cell; the Keras export rescaled each so its brightest pixel is 255), groups from the
  source map;
* PBC test split restricted to the four Kaggle classes (``pbc4.csv``);
* BCCD fields as the Kaggle images were made (the whole 640x480 field at half size, 320x240) for
  every field with exactly one WBC box and one label, group = field; un-augmented originals; ``bccd_unseen.csv`` keeps
  only fields whose source cell fed Kaggle TEST and never TRAIN (nor a near-duplicate twin).
Models:
* ``pbc-only`` / ``kaggle-only``: the MobileNetV2s of the PBC and honest Kaggle tables (standard recipe;
  results/pbc/mobilenet_v2, results/kaggle-honest/mobilenet_v2), evaluated when their weights are there;
* ``pbc-only-robust`` / ``kaggle-only-robust``: the same budget (128 px, 6 epochs) with the recipe chosen on
  validation by scripts/robust_sweep.py (docs/decisions/0014): ``robust`` augmentation, Reinhard colour
  normalisation; trained here into --work;
* ``…+adabn``: those, adapted without labels (`wbc adapt --unlabelled`: BatchNorm statistics re-estimated on
  2,000 unlabelled images of the other lab's *training* data — Kaggle TRAIN train split, PBC train split —
  never on the images tested);
* ``…+selftrain``: AdaBN followed by label-free self-training (`wbc adapt --unlabelled --self-train`, SHOT) on
  the same unlabelled images (the four shared classes of the PBC train split), with the epochs chosen on
  validation by scripts/selftrain_sweep.py; only when its rule adopted it (results/selftrain-sweep/choice.json);
* ``…-robust-mixstyle``: the robust models trained with MixStyle as well (``--mixstyle 0.5``), only when
  scripts/robust_sweep.py's rule adopted it on validation (results/robust-sweep/mixstyle-choice.json);
* ``…-robust-mixstyle-effnet``: the same with EfficientNet-Lite0 instead of MobileNetV2, only when its rule
  adopted it on validation (results/robust-sweep/backbone-choice.json); ``…-robust-mixstyle-jpeg``: with JPEG
  re-compression added to the augmentation, likewise (jpeg-choice.json);
* ``default``: the bundled model (it trained on both sources; only BCCD fields it never saw count).
Test sets a model trained on are skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MASTER = DATA / "blood-cells" / "dataset-master" / "dataset-master"
PROV = DATA / "blood-cells" / "provenance"
KAGGLE4 = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
KAGGLE = DATA / "blood-cells" / "dataset2-master" / "dataset2-master" / "images"
MAP = PROV / "dataset2_source_map.csv"
MODELS = {"pbc-only": ROOT / "results/pbc/mobilenet_v2", "kaggle-only": ROOT / "results/kaggle-honest/mobilenet_v2",
          "default": None}
#: the budget of the PBC / honest Kaggle tables, with the recipe of docs/decisions/0014
ROBUST = dict(arch="mobilenet_v2", img_size=128, epochs=6, lr=3e-4, schedule="onecycle", class_weights=True,
              monitor="val_accuracy", patience=6, seed=0, augment_preset="robust",
              preprocess={"crop": 0.7, "stain_norm": "reinhard"})


def pbc4_manifest(out: Path) -> Path:
    rows = [r for r in csv.DictReader((ROOT / "data/splits/pbc.csv").open())
            if r["split"] == "test" and r["label"] in KAGGLE4]
    for r in rows:  # manifest paths are relative to the manifest's folder
        r["path"] = str((ROOT / "data/splits" / r["path"]).resolve())
    _write(out, rows)
    return out


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "label", "group", "split"])
        w.writeheader()
        w.writerows(rows)


def bccd_crops(work: Path) -> tuple[Path, Path]:
    """Halve every single-WBC, single-label BCCD field; return (all fields, unseen fields) manifests."""
    from wbc.agreement import write_bccd_reference
    labels: dict[str, str] = {}
    for name, kwargs in (("all", {}), ("unseen", {"source_map": PROV / "dataset2_source_map.csv",
                                                  "near_duplicates": PROV / "dataset_master_near_duplicates.csv"})):
        ref = work / f"bccd_ref_{name}.csv"
        write_bccd_reference(MASTER / "labels.csv", MASTER / "JPEGImages", ref, **kwargs)
        labels[name] = {Path(r["image"]).stem: r["label"] for r in csv.DictReader(ref.open())}
    crops = work / "bccd_crops"
    crops.mkdir(parents=True, exist_ok=True)
    rows = []
    for stem, label in sorted(labels["all"].items()):
        boxes = []
        xml = DATA / "BCCD_Dataset" / "BCCD" / "Annotations" / f"{stem}.xml"  # the VOC boxes with WBCs
        if not xml.is_file():  # a few labelled fields have no box annotation
            continue
        for obj in ET.parse(xml).getroot().iter("object"):
            if obj.findtext("name") == "WBC":
                b = obj.find("bndbox")
                boxes.append([int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")])
        if len(boxes) != 1:
            continue
        path = crops / f"{stem}.png"
        if not path.is_file():  # the Kaggle images are whole BCCD fields at half size (docs/decisions/0006)
            Image.open(MASTER / "JPEGImages" / f"{stem}.jpg").convert("RGB").resize((320, 240), Image.LANCZOS).save(path)
        rows.append({"path": str(path.resolve()), "label": label, "group": stem, "split": "test"})
    all_csv, unseen_csv = work / "bccd_all.csv", work / "bccd_unseen.csv"
    _write(all_csv, rows)
    _write(unseen_csv, [r for r in rows if r["group"] in labels["unseen"]])
    return all_csv, unseen_csv


def robust_models(work: Path) -> dict[str, Path]:
    """Train the robust-recipe PBC-only and Kaggle-only models and their label-free (AdaBN) adaptations."""
    from wbc.adapt import AdaptConfig, adapt
    from wbc.training import TrainConfig, train
    plan = {"pbc-only-robust": ([str(ROOT / "data/splits/pbc.csv")], {}, ROOT / "data/splits/kaggle.csv"),
            "kaggle-only-robust": ([str(ROOT / "data/splits/kaggle.csv")], {"groups": str(MAP), "max_per_class": 1000},
                                   ROOT / "data/splits/pbc.csv")}
    base = dict(plan)
    for variant, options in sweep_choices().items():  # adopted on validation by scripts/robust_sweep.py
        plan.update({f"{name}{variant}": (data, {**extra, **options}, lab)
                     for name, (data, extra, lab) in base.items()})
    out = {}
    for name, (data, extra, other_lab) in plan.items():
        run = work / name
        if not (run / "run.json").is_file():
            train(TrainConfig(data=data, out=str(run), progress=False, resume=(run / "checkpoint.pt").is_file(),
                              **{**ROBUST, **extra}))
        out[name] = run
        adapted = work / f"{name}+adabn"
        if not (adapted / "model.safetensors").is_file():  # the other lab's training split, labels ignored
            adapt(AdaptConfig(data=[], unlabelled=[str(other_lab)], split="train", out=str(adapted), model=str(run),
                              max_unlabelled=2000, progress=False))
        out[f"{name}+adabn"] = adapted / "model.safetensors"
        choice_file = ROOT / "results/selftrain-sweep/choice.json"
        choice = json.loads(choice_file.read_text()) if choice_file.is_file() else {"adopted": False}
        if choice["adopted"] and name in base:
            st = work / f"{name}+selftrain"
            if not (st / "model.safetensors").is_file():
                man = unlabelled_manifest(other_lab, "train", work / f"{name}-selftrain-unlabelled.csv")
                adapt(AdaptConfig(data=[], unlabelled=[str(man)], out=str(st), model=str(run), max_unlabelled=2000,
                                  self_train=choice["epochs"], classes=list(KAGGLE4), progress=False))
            out[f"{name}+selftrain"] = st / "model.safetensors"
    return out


#: model-name suffix -> the choice file of scripts/robust_sweep.py whose rule adds those models
VARIANTS = {"-mixstyle": "mixstyle-choice.json", "-mixstyle-effnet": "backbone-choice.json",
            "-mixstyle-jpeg": "jpeg-choice.json"}


def sweep_choices() -> dict[str, dict]:
    """The recipe variants whose validation rule was met: suffix -> the training options the rule adopted."""
    out = {}
    for variant, name in VARIANTS.items():
        f = ROOT / "results/robust-sweep" / name
        c = json.loads(f.read_text()) if f.is_file() else {"adopted": False}
        if c["adopted"]:
            out[variant] = {k: c[k] for k in ("mixstyle", "arch", "augment_preset") if k in c}
    return out


def unlabelled_manifest(manifest: Path, split: str, out: Path) -> Path:
    """Paths (no labels) of one split's images of the four shared classes: the other lab's unlabelled cells."""
    rows = [{"path": str((manifest.parent / r["path"]).resolve()), "label": "", "group": "", "split": ""}
            for r in csv.DictReader(manifest.open()) if r["split"] == split and r["label"] in KAGGLE4]
    _write(out, rows)
    return out


def robust_rows(variant: str) -> list[tuple[str, str]]:
    """(model, test set) pairs of the robust single-source models of one recipe variant and their AdaBN
    adaptations: each on the other lab's tests (BCCD fields it never saw, once adapted)."""
    p, k = f"pbc-only-robust{variant}", f"kaggle-only-robust{variant}"
    return [(p, "kaggle-test"), (p, "kaggle-test-simple"), (p, "bccd-fields"),
            (f"{p}+adabn", "kaggle-test"), (f"{p}+adabn", "kaggle-test-simple"), (f"{p}+adabn", "bccd-fields-unseen"),
            (k, "pbc-test-4"), (k, "bccd-fields-unseen"), (f"{k}+adabn", "pbc-test-4")]


def _on_disk(model: Path | None) -> bool:
    from wbc.errors import WbcError
    from wbc.modelio import resolve_model_path
    try:
        resolve_model_path(model)
        return True
    except WbcError:
        return False


def main() -> None:
    from wbc.evaluation import EvalConfig, evaluate
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "crossdomain"), help="(default: results/crossdomain)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "crossdomain"), help="(default: runs/crossdomain)")
    ap.add_argument("--only", default=None,
                    help="comma-separated models to (re-)evaluate, e.g. 'default' after retraining the bundled model "
                         "(default: all)")
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    only = set(a.only.split(",")) if a.only else None
    pbc4 = pbc4_manifest(work / "pbc4.csv")
    bccd_all, bccd_unseen = bccd_crops(work)
    models = {**MODELS, **(robust_models(work) if only is None or only - {"default", *MODELS} else {})}
    tests = {"kaggle-test": (ROOT / "data/splits/kaggle.csv", MAP),
             "kaggle-test-simple": (KAGGLE / "TEST_SIMPLE", MAP),
             "pbc-test-4": (pbc4, None), "bccd-fields": (bccd_all, None), "bccd-fields-unseen": (bccd_unseen, None)}
    plan = [("pbc-only", "kaggle-test"), ("pbc-only", "kaggle-test-simple"), ("pbc-only", "bccd-fields"),
            ("kaggle-only", "pbc-test-4"),
            ("kaggle-only", "bccd-fields-unseen"),
            *robust_rows(""),
            ("pbc-only-robust+selftrain", "kaggle-test"), ("pbc-only-robust+selftrain", "kaggle-test-simple"),
            ("pbc-only-robust+selftrain", "bccd-fields-unseen"), ("kaggle-only-robust+selftrain", "pbc-test-4"),
            *robust_rows("-mixstyle"), *robust_rows("-mixstyle-effnet"), *robust_rows("-mixstyle-jpeg"),
            ("default", "kaggle-test-simple"), ("default", "bccd-fields-unseen")]
    unknown = (only or set()) - {m for m, _ in plan}
    if unknown:
        ap.error(f"--only: unknown model(s) {', '.join(sorted(unknown))}; choose from "
                 f"{', '.join(dict.fromkeys(m for m, _ in plan))}")
    for model, test in plan:
        if only is not None and model not in only:
            continue
        if model not in models:  # a row whose variant the validation rule did not adopt
            continue
        path = models[model]
        if not _on_disk(path):  # results/ keeps metrics, not weights
            print(f"{model:12s}: no model at {path} (run its results step first); kept the earlier result", flush=True)
            continue
        data, groups = tests[test]
        m = evaluate(EvalConfig(data=str(data), out=str(out / f"{model}__{test}"),
                                model=None if path is None else str(path), groups=groups and str(groups),
                                progress=False))
        print(f"{model:12s} -> {test:18s} accuracy {m['accuracy']:.3f} balanced {m['balanced_accuracy']:.3f} "
              f"n={m['n_images']}", flush=True)


if __name__ == "__main__":
    main()
