"""Assemble docs/results.md from the outputs of scripts/results.sh (no number is typed by hand).

Usage: python scripts/results_md.py [RESULTS_DIR] [OUT_MD]
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "results"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "results.md"


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def metrics_line(name: str, path: Path) -> str:
    if not path.is_file():
        return f"| {name} | not run yet | | | | |"
    m = json.loads(path.read_text())
    lo, hi = m["accuracy_ci95"]
    return (f"| {name} | {pct(m['accuracy'])} ({pct(lo)}–{pct(hi)}) | {pct(m['balanced_accuracy'])} | "
            f"{pct(m['macro_f1'])} | {m['n_images']} | {m.get('ci_method', '')} |")


def per_class_recall(path: Path) -> str:
    if not path.is_file():
        return ""
    m = json.loads(path.read_text())
    cells = ", ".join(f"{c} {pct(v['recall'])} %" for c, v in m["per_class"].items())
    cm, classes = m["confusion_matrix"], m["classes"]
    worst = max(((cm[i][j], classes[i], classes[j]) for i in range(len(classes)) for j in range(len(classes)) if i != j))
    return (f"Recall per class: {cells}. Largest confusion: {worst[0]} {worst[1]} images called {worst[2]} "
            f"(of {sum(cm[classes.index(worst[1])])}).")


def section(title: str, folder: Path, command: str, text: str) -> list[str]:
    lines = [f"## {title}", "", text, "", f"Command: `{command}`", ""]
    table = folder / "comparison.md"
    lines += [table.read_text() if table.is_file() else "_Not run yet._", ""]
    return lines


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def default_recipe() -> str:
    runs = {m: load(RESULTS / "default" / f"member-{m}" / "run.json") for m in ("a", "b")}
    if None in runs.values():
        return "_Training runs not recorded yet._"
    c = runs["a"]["config"]
    pre = c.get("preprocess") or {}
    from wbc.modelio import default_model_path, read_info
    info = read_info(default_model_path())
    if info.arch != "ensemble":
        return "_The bundled model is not the ensemble this section describes; re-run `bash scripts/results.sh default`._"

    def trained(r: dict) -> str:
        r = r["result"]
        return (f"epoch {r['best_epoch']} of {r['epochs_run']} kept, {r['n_train']} training images, "
                f"{r['wall_seconds'] / 60:.0f} min")
    return (f"An ensemble of {len(info.members)} members, their logits averaged (docs/decisions/0015). Each member: "
            f"`{c['arch']}` ({'ImageNet weights' if c['pretrained'] else 'random init'}), {c['img_size']} px on a "
            f"WBC-centred crop ({100 * pre.get('crop', 1):.0f} % of the short side), colour normalisation "
            f"{pre.get('stain_norm') or 'none'}, Adam {c['lr']:g} "
            f"{c['schedule']}, {c['epochs']} epochs, augmentation `{c.get('augment_preset', 'standard')}`, label "
            f"smoothing {c.get('label_smoothing', 0)}, class-weighted loss {c['class_weights']}, checkpoint chosen on "
            f"validation {c.get('monitor', 'val_loss')}, {runs['a']['result']['n_val']} validation images. Member a "
            f"caps training images at {c['max_per_class']} per class over both sources ({trained(runs['a'])}); "
            f"member b caps each source separately (`--cap-each-source`, so every PBC training image is used; "
            f"{trained(runs['b'])}). Data: {', '.join(c['data'])} (PBC train split plus Kaggle TRAIN, Kaggle "
            f"classes mapped onto PBC names)." + refit_text(info))


def refit_text(info) -> str:
    """The final fit of docs/decisions/0016, if the bundled model is it."""
    refits = {m: load(RESULTS / "default" / f"refit-{m}" / "run.json") for m in ("a", "b")}
    cal = info.training.get("calibration") or {}
    if None in refits.values() or "copied_from" not in cal:
        return f" Temperature {info.temperature:.2f} fitted on the ensemble's validation predictions."
    r = {m: v["result"] for m, v in refits.items()}
    return (f" Once chosen, both members were trained again with the same command on the train **and** val "
            f"splits (`wbc train --refit`, docs/decisions/0016; last of {r['a']['epochs_run']} epochs kept): member a "
            f"on {r['a']['n_train']} images ({r['a']['wall_seconds'] / 60:.0f} min), member b on {r['b']['n_train']} "
            f"({r['b']['wall_seconds'] / 60:.0f} min). The bundled model is that refit; with no held-out data left, "
            f"it carries the calibration of its validated twin (`wbc calibrate --from-model`): temperature "
            f"{info.temperature:.2f}, review and unknown thresholds as fitted on the twin's validation predictions.")


def group_line() -> str:
    m = load(RESULTS / "default" / "kaggle-test" / "metrics.json")
    if not m or "group_accuracy" not in m:
        return ""
    return (f" With each of its {m['n_groups']} source cells weighted once (its augmented copies counting as one; "
            f"`group_accuracy` in metrics.json), Kaggle TEST accuracy is {pct(m['group_accuracy'])} %; the target "
            f"is per image, as the row above counts.")


def choice_table() -> list[str]:
    """Validation accuracy of each member and of the ensemble: the choice of docs/decisions/0015."""
    rows = ["| model | PBC val % | Kaggle val % | both % |", "|---|---|---|---|"]
    for key, name in (("member-a", "member a"), ("member-b", "member b"), ("ensemble", "ensemble (bundled)")):
        ms = [load(RESULTS / "default" / "val" / f"{key}-{s}" / "metrics.json") for s in ("pbc", "kaggle")]
        if None in ms:
            return []
        both = sum(m["accuracy"] * m["n_images"] for m in ms) / sum(m["n_images"] for m in ms)
        rows.append(f"| {name} | {pct(ms[0]['accuracy'])} | {pct(ms[1]['accuracy'])} | {pct(both)} |")
    return ["Chosen on the validation splits (torch backend; members trained on the train splits only), before any "
            "test figure was seen:", "", *rows, ""]


def review_line() -> str:
    parts = []
    for name, key in (("PBC test", "pbc-test"), ("Kaggle TEST", "kaggle-test")):
        m = load(RESULTS / "default" / key / "metrics.json")
        if m and m.get("review"):
            r = m["review"]
            parts.append(f"{name}: {pct(r['review_share'])} % of cells sent to review, the rest {pct(r['accuracy_kept'])} % "
                         f"correct (reviewed ones {pct(r['accuracy_reviewed'])} %)")
            thr = r["threshold"]
    if not parts:
        return ""
    return (f"Review threshold shipped with the model: calibrated confidence {thr:.3f}, chosen on the validation "
            "splits of both sources so that the cells kept are ≥ 95 % correct (`wbc calibrate`, "
            "docs/decisions/0011). " + "; ".join(parts) + ". One temperature for both sources leaves PBC "
            "under-confident; a lab re-fits both on its own labelled cells with `wbc calibrate`.")


def robust_sweep_section() -> list[str]:
    lines = ["## Choosing the recipe for robustness across labs (validation only)", "",
             "Command: `bash scripts/results.sh robust-sweep` (`scripts/robust_sweep.py`, docs/decisions/0014). "
             "Each recipe trains a PBC-only and a Kaggle-only MobileNetV2 (128 px, 4 epochs, ImageNet start, "
             "WBC-centred crop 0.7) and scores them on the *other* lab's validation data: Kaggle TRAIN (train split, "
             "228 source-cell groups) and the PBC validation split (4 shared classes) — never a test split. Balanced "
             "accuracy %, predictions restricted to the four shared classes; '+ AdaBN' = BatchNorm statistics "
             "re-estimated on unlabelled images of the target lab (the Kaggle val split / the PBC train split, not "
             "the images scored). In-domain columns: accuracy on the model's own validation split. "
             "robust+reinhard+mixstyle adds MixStyle (`wbc train --mixstyle 0.5`: the channel statistics of early "
             "feature maps mixed between the images of a batch, in training only); …+effnet is the same with "
             "EfficientNet-Lite0 (ImageNet weights) instead of MobileNetV2; …+jpeg adds JPEG re-compression (quality "
             "30–90, half the images) to the augmentation.", ""]
    table = RESULTS / "robust-sweep" / "sweep.md"
    lines += [table.read_text() if table.is_file() else "_Not run yet._", ""]
    for name, title, when in (("mixstyle", "MixStyle", "fixed before its Kaggle-only model was scored"),
                              ("backbone", "Backbone", "fixed before either of its models was trained"),
                              ("jpeg", "JPEG", "fixed before either of its models was trained")):
        choice = RESULTS / "robust-sweep" / f"{name}-choice.json"
        if choice.is_file():
            c = load(choice)
            (base, b), (cand, m) = c["cross_domain_mean"].items()
            lines += [f"{title} rule, {when}: {c['rule']}. **{'Adopted' if c['adopted'] else 'Not adopted'}** "
                      f"(mean {pct(m)} against {pct(b)} %, PBC val {pct(c['pbc_val_accuracy'][cand])} against "
                      f"{pct(c['pbc_val_accuracy'][base])} %).", ""]
    return lines


def crossdomain_section() -> list[str]:
    lines = ["## Across labs: trained on one source, tested on the other", "",
             "Command: `bash scripts/results.sh crossdomain` (`scripts/crossdomain.py`). pbc-only / kaggle-only = "
             "the MobileNetV2s of the PBC and honest Kaggle tables (standard recipe); …-robust = the same budget "
             "(128 px, 6 epochs) with the recipe chosen above (docs/decisions/0014: `robust` augmentation, Reinhard "
             "colour normalisation); …-robust-mixstyle = the same with MixStyle (adopted on validation above); …+adabn = those adapted without labels (`wbc adapt --unlabelled`: BatchNorm "
             "statistics of 2,000 unlabelled images of the other lab's *training* data, never of the images "
             "tested); default = the bundled model. Predictions restricted to the test set's classes. kaggle-test-simple = "
             "Kaggle's TEST_SIMPLE, the 71 un-augmented TEST source images (one per source cell, each rescaled by the "
             "Keras export so its brightest pixel is 255). BCCD fields = every field with "
             "one WBC box and one label, halved to 320x240 as the Kaggle images were made (un-augmented); 'unseen' = "
             "only fields whose source cell fed Kaggle TEST and never TRAIN. The issue's target is ≥ 90 % balanced "
             "accuracy in each cross-domain direction.", "",
             "| model | test set | accuracy % (95 % CI) | balanced acc % | macro F1 % | images |",
             "|---|---|---|---|---|---|"]
    folder = RESULTS / "crossdomain"
    found = sorted(folder.glob("*__*/metrics.json")) if folder.is_dir() else []
    for path in found:
        model, test = path.parent.name.split("__")
        m = load(path)
        lo, hi = m["accuracy_ci95"]
        lines.append(f"| {model} | {test} | {pct(m['accuracy'])} ({pct(lo)}–{pct(hi)}) | "
                     f"{pct(m['balanced_accuracy'])} | {pct(m['macro_f1'])} | {m['n_images']} |")
    if not found:
        lines.append("| not run yet | | | | | |")
    return lines + [""]


def table_section(title: str, table: Path, text: str) -> list[str]:
    """A sub-section: its title, what it measured and how, then the Markdown table a script wrote."""
    return [f"### {title}", "", text, "", table.read_text().rstrip("\n") if table.is_file() else "_Not run yet._", ""]


def ensemble_transfer_section() -> list[str]:
    return table_section(
        "Seed variance and two-seed ensembles across labs (validation only)",
        RESULTS / "ensemble-transfer" / "transfer.md",
        "Command: `python scripts/ensemble_transfer.py` (part of `bash scripts/results.sh crossdomain`). The "
        "robust single-source models above (seed 0), their seed-1 twins (same recipe and budget) and the two as "
        "one ensemble (`wbc ensemble`), scored with the validation protocol of the recipe sweep: PBC-only "
        "models on Kaggle TRAIN's train split, Kaggle-only models on the PBC validation split (four classes); "
        "+ AdaBN = BatchNorm statistics from the target's other half. The rule fixed before the run (the pair "
        "beats seed 0 in both directions without AdaBN) was not met, so the pairs have no test rows.")


def selftrain_section() -> list[str]:
    return table_section(
        "Label-free self-training after AdaBN (validation only)", RESULTS / "selftrain-sweep" / "sweep.md",
        "Command: `python scripts/selftrain_sweep.py` (part of `bash scripts/results.sh crossdomain`; "
        "docs/decisions/0017). `wbc adapt --unlabelled --self-train N` (SHOT: the feature extractor learns from "
        "the new lab's unlabelled cells, head frozen) against AdaBN alone, on the robust single-source models "
        "above: PBC-only adapted on the Kaggle TRAIN val split's unlabelled images and scored on the Kaggle TRAIN "
        "train split; Kaggle-only adapted on 2,000 unlabelled PBC train-split cells and scored on the PBC "
        "validation split; balanced accuracy %, four shared classes. The rule fixed before the run: test rows "
        "only if it beats AdaBN alone in both directions.")


def adapt_section() -> list[str]:
    lines = ["## Few-shot adaptation to a new lab (`wbc adapt`)", "",
             "Command: `bash scripts/results.sh adapt` (`scripts/adapt_curve.py`, after the crossdomain step). A "
             "PBC-only MobileNetV2 is adapted with 5, 10 or 20 labelled cells per class from Kaggle TRAIN (distinct "
             "source cells first) and tested on Kaggle TEST (source cells disjoint from the adaptation cells) and on "
             "the PBC test split (what it knew before). Mean ± SD over 3 draws of the cells. 'bn, unlabelled' = "
             "no labels at all: BatchNorm statistics of 2,000 unlabelled Kaggle TRAIN images "
             "(`wbc adapt --unlabelled`).", ""]
    ad = load(RESULTS / "adapt" / "adapt.json")
    if not ad:
        return lines + ["_Not run yet._", ""]
    lines += [f"Model adapted: `{ad['source_model']}`. 'bn+head' re-fits the head always (`--head refit`), "
              "'bn+auto head' only when re-fitted heads classify the shots they did not see (2-fold cross-fitting) "
              "better than the kept head (`--head auto`), 'bn only' keeps it (`--head keep`).", ""]
    lines += adapt_table(ad["rows"], "TEST", "test")
    val = load(RESULTS / "adapt-val" / "adapt.json")
    choice = load(RESULTS / "adapt-val" / "choice.json")
    if val and choice:
        lines += ["", "The default of `--head` was chosen on the val splits before the test rows above were run "
                  "(`python scripts/adapt_curve.py --eval-split val`: the same shots, scored on the Kaggle and PBC val "
                  f"splits). Rule, fixed beforehand: {choice['rule']} Default: **{choice['default']}** "
                  "(docs/decisions/0008).", ""]
        lines += adapt_table(val["rows"], "val", "val")
        lines += ["", "'bn only' at 1–3 cells per class (val only) sets how few cells `wbc adapt` accepts for "
                  "re-estimating BatchNorm statistics: 4 distinct images (one per class here) were the fewest measured "
                  "and no worse on the lab's val cells than not adapting; fewer are refused (`wbc.adapt.MIN_BN_IMAGES`, "
                  "docs/decisions/0008)."]
    mini = load(RESULTS / "adabn-minimum" / "minimum.json")
    if mini:
        lines += ["", "How few *unlabelled* cells `wbc adapt --unlabelled` takes (`python scripts/adabn_minimum.py`, "
                  "validation only): the same source model, BatchNorm statistics of k unlabelled Kaggle train-split "
                  f"images (3 random draws each), scored on the val splits. Rule, fixed beforehand: {mini['rule']}. "
                  f"Minimum: **{mini['minimum']}** (`wbc.adapt.MIN_UNLABELLED`).", "",
                  "| unlabelled images | Kaggle val balanced % | PBC val acc % |", "|---|---|---|"]
        for r in mini["rows"]:
            sd = lambda k: f" ± {100 * r[k + '_sd']:.1f}" if k + "_sd" in r else ""  # noqa: E731
            lines.append(f"| {r['images'] or 'none (before)'} | {pct(r['kaggle_val_balanced'])}"
                         f"{sd('kaggle_val_balanced')} | {pct(r['pbc_val_accuracy'])}{sd('pbc_val_accuracy')} |")
    return lines + [""]


def adapt_table(rows: list[dict], kaggle: str, pbc: str) -> list[str]:
    lines = [f"| method | cells per class | Kaggle {kaggle} acc % | Kaggle {kaggle} balanced % | PBC {pbc} acc % |",
             "|---|---|---|---|---|"]
    for r in rows:
        sd = lambda k: f" ± {100 * r[k + '_sd']:.1f}" if k + "_sd" in r else ""  # noqa: E731
        lines.append(f"| {r['variant']} | {r['shots']} | {pct(r['kaggle_test_accuracy'])}{sd('kaggle_test_accuracy')} | "
                     f"{pct(r['kaggle_test_balanced'])}{sd('kaggle_test_balanced')} | "
                     f"{pct(r['pbc_test_accuracy'])}{sd('pbc_test_accuracy')} |")
    return lines


def ood_section() -> list[str]:
    lines = ["## Out-of-distribution input: the unknown verdict", "",
             "Command: `bash scripts/results.sh ood` (`scripts/make_ood_set.py`, then `wbc evaluate-ood`; "
             "docs/decisions/0013). Images that are not a white blood cell: windows of BCCD fields holding only red "
             "cells, only platelets (a class PBC has: calling them platelet is not wrong), or plasma background (no "
             "WBC box in them), and synthetic non-microscopy images (noise, gradients, checkerboards, stripes, text). "
             "The set is halved by source field: the score (logit energy, against the maximum softmax probability) "
             "was chosen on the val half with the validation splits; the rows below are the test half against the "
             "PBC and Kaggle test images. An image is called unknown when its energy falls below the threshold "
             "stored in the model (95 % of the validation cells pass), or when its crop holds no blue/purple stain "
             "at all before colour normalisation (`wbc.preprocessing.has_stain`: 99th-percentile nucleus score "
             "< 30; every one of the 2,514 validation cells passes, lowest 36.5: `python scripts/stain_threshold.py`); unknown cells go to review like "
             "low-confidence ones. The stain rule is what catches plasma background: without it, Reinhard "
             "normalisation stretched those crops into texture and energy alone called 21 % of them unknown.", ""]
    o = load(RESULTS / "ood" / "ood.json")
    if not o or "kinds" not in o:
        return lines + ["_Not run yet._", ""]
    rev = o.get("review_threshold")
    rev_head = f"below the review threshold ({rev:.3f}) %" if rev is not None else "below the review threshold %"
    lines += [f"| images | n | AUROC energy | AUROC max-probability | called unknown % | {rev_head} |",
              "|---|---|---|---|---|---|"]
    for name, r in {**o["kinds"], "all of these": o["all"]}.items():
        msp = f"{r['auroc_msp']:.3f}" if r.get("auroc_msp") is not None else "–"
        lines.append(f"| {name} | {r['n']} | {r['auroc']:.3f} | {msp} | {pct(r['unknown'])} | "
                     f"{pct(r.get('below_review'))} |")
    lines.append(f"| real cells: PBC + Kaggle test (the cost) | {o['n_in']} | | | {pct(o['in_unknown'])} | "
                 f"{pct(o.get('in_below_review'))} |")
    for r in o.get("in_by_data", []):
        lines.append(f"| … {Path(r['data']).stem} {r['split']} | {r['n']} | | | {pct(r['unknown'])} | "
                     f"{pct(r.get('below_review'))} |")
    lines += ["", f"Unknown threshold: {o['score']} {o['threshold']:.3f} ({o['threshold_source']}), "
                  f"{o.get('backend', '')} backend (the shipped int8 path). Confidences here are over all the model's "
                  "classes, as `wbc predict` and `wbc count` use them (the test-set rows above restrict Kaggle to its "
                  "four classes, hence fewer cells below the review threshold there)."]
    return lines + [""]


def bccd_sections() -> list[str]:
    lines = ["## Segmentation of WBCs on BCCD smear fields", "",
             "Command: `bash scripts/results.sh segmentation` (classical method of docs/decisions/0004; no training).", ""]
    seg = load(RESULTS / "segmentation" / "bccd.json")
    if seg:
        lines += ["| fields with one WBC box | segmented WBC IoU ≥ 0.5 | … and no extra WBC | all WBCs: precision | "
                  "recall | median IoU |", "|---|---|---|---|---|---|",
                  f"| {seg['single_wbc_fields']} | {pct(seg['single_wbc_hit_rate'])} % | "
                  f"{pct(seg['single_wbc_exact_rate'])} % | {seg['precision']:.3f} | {seg['recall']:.3f} | "
                  f"{seg['median_iou']:.3f} |", ""]
    else:
        lines += ["_Not run yet._", ""]
    lines += ["## WBC detection in smear fields (`wbc count`)", "",
              "Command: `bash scripts/results.sh detection`: all annotated BCCD fields, one-to-one matching at "
              "IoU ≥ 0.5 against the VOC WBC boxes.", ""]
    det = load(RESULTS / "detection" / "bccd.json")
    if det:
        lines += ["| magnification | fields | precision | recall | median IoU |", "|---|---|---|---|---|"]
        for key, name in (("pooled", "pooled over the sample (as `wbc count` does)"), ("per_field", "each field alone")):
            d = det[key]
            lines.append(f"| {name} | {d.get('fields', '')} | {d['precision']:.3f} | {d['recall']:.3f} | "
                         f"{d.get('median_iou', float('nan')):.3f} |")
        lines.append("")
    else:
        lines += ["_Not run yet._", ""]
    lines += ["## Agreement with the BCCD labels (clinical validation)", "",
              "Command: `bash scripts/results.sh agreement`: `wbc count` with the bundled model on the BCCD fields "
              "whose source cell fed Kaggle TEST and never TRAIN (nor a near-duplicate twin), against the per-image "
              "labels of `labels.csv` (fields with one label).", ""]
    ag = load(RESULTS / "agreement" / "agreement.json")
    if ag:
        lo, hi = ag["kappa_ci95"]
        sens = ", ".join(f"{r['class']} {r['sensitivity']:.2f} (n={r['reference_n']})" for r in ag["per_class"]
                         if r["reference_n"])
        lines += [f"{ag['n']} fields paired: Cohen's kappa **{ag['kappa']:.3f}** (95 % CI {lo:.3f}–{hi:.3f}), "
                  f"observed agreement {ag['observed_agreement']:.3f}. Sensitivity: {sens}.", ""]
    else:
        lines += ["_Not run yet._", ""]
    return lines


def main() -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Results", "",
        "Every number below was measured by `bash scripts/results.sh` (training and evaluation, resumable) and "
        "written into this file by `python scripts/results_md.py`. Accuracy intervals are 95 % bootstrap "
        "intervals, over source groups where groups are known. Wall times are on the machine named here: "
        f"{torch.get_num_threads()} CPU threads ({cpu}), PyTorch {torch.__version__}, no GPU.", "",
        "## The bundled default model", "",
        default_recipe(), "",
        "`wbc` runs it as its int8 ONNX twin (`--backend auto`, docs/decisions/0009); the rows below are that "
        "shipped path. Evaluated once on held-out tests it never saw: the PBC group-aware test split and the official Kaggle TEST "
        "folder (its predictions restricted to Kaggle's four classes).", "",
        "Command: `bash scripts/results.sh default`", "",
        *choice_table(),
        "| test set | accuracy % (95 % CI) | balanced acc % | macro F1 % | images | CI |", "|---|---|---|---|---|---|",
        metrics_line("PBC test (8 classes)", RESULTS / "default" / "pbc-test" / "metrics.json"),
        metrics_line("Kaggle official TEST (4 classes)", RESULTS / "default" / "kaggle-test" / "metrics.json"), "",
        "Kaggle TEST: " + per_class_recall(RESULTS / "default" / "kaggle-test" / "metrics.json"),
        review_line(), "",
        "The core issue's targets are ≥ 98 % on PBC and ≥ 90 % on Kaggle TEST; compare the rows above. The Kaggle "
        "interval is wide because TEST holds only 68 source cells, each augmented 12–156 times." + group_line(), "",
    ]
    lines += section(
        "Kaggle dataset2-master: the papers' protocol (random 70/20/10 of TRAIN+TEST)", RESULTS / "kaggle-random",
        "bash scripts/results.sh kaggle-random",
        "A random split puts augmented copies of the same source cell into train and test; the figures are inflated. "
        "Budget for every row: 6 epochs, at most 1,000 training images per class (augmented copies; every source "
        "still present), 128 px for the backbones (the papers' CNNs have fixed inputs: 102 and 100 px), the "
        "epoch with the best validation accuracy kept.")
    lines += section(
        "Kaggle dataset2-master: the honest protocol (train on TRAIN, test on TEST)", RESULTS / "kaggle-honest",
        "bash scripts/results.sh kaggle-honest",
        "TRAIN and TEST come from disjoint source smears (except two twin cells, see the data README); validation "
        "is split off TRAIN by source group (`dataset2_source_map.csv`). The gap to the table above is leakage: "
        "`wbc audit` and the source map show every TEST source occurring 12–156 times as augmented copies. "
        "Same budget as above.")
    lines += section(
        "PBC, 8 classes, group-aware split after de-duplication", RESULTS / "pbc",
        "bash scripts/results.sh pbc", "Split: `data/splits/pbc.csv` (70/15/15, exact and near duplicates kept "
        "together, `wbc split --dedup`). 6 epochs, 128 px for the backbones, class-weighted loss, the epoch with "
        "the best validation accuracy kept. MobileNetV2 and EfficientNet-Lite0 start from ImageNet weights; "
        "MobileNetV3-Small has none offline and trains from random weights here. The classical rows (`svm` … "
        "`logistic-regression`, `bash scripts/results.sh classical`) are scikit-learn pipelines on the "
        "handcrafted features of docs/features.md, hyper-parameters by 3-fold cross-validation on the training "
        "split only; their 'train time' includes the search; the Kaggle classical rows are in the honest-protocol "
        "table above.")
    lines += section(
        "PBC, big backbones on a reduced CPU budget", RESULTS / "pbc-reduced", "bash scripts/results.sh pbc",
        "VGG16, ResNet50 and InceptionV3 trained **from random weights** (their ImageNet weights cannot be downloaded "
        "on this offline machine; with internet, drop `--no-pretrained` to use them), at 96 px, 250 training "
        "images per class, 4 epochs, Adam 1e-3 (VGG16: 1e-4 — without BatchNorm it stayed at chance level with "
        "1e-3 from random weights). These rows measure what a 2-core CPU affords, not the architectures' ceiling.")
    lines += robust_sweep_section()
    lines += crossdomain_section()
    lines += ensemble_transfer_section()
    lines += selftrain_section()
    lines += adapt_section()
    lines += ood_section()
    lines += bccd_sections()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".partial")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
