"""The ``wbc`` command line: argument parsing only; the work lives in the library.

Every error caused by input (a bad file, a wrong option) is printed as one line,
``wbc: error: ...``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import WbcError

log = logging.getLogger("wbc")


def _add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("Model")
    g.add_argument("--model", "-m", required=required, default=None,
                   help="run folder or model file (.safetensors / .skops) (default: the bundled model)")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bf16 autocast where the CPU has native bf16 (default: auto)")
    g.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    g.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="inference engine; auto = the bundled int8 ONNX model for the bundled model, ONNX Runtime "
                   "for .onnx files, else torch; onnxruntime exports a torch model to ONNX once (default: auto)")


def _add_review_threshold(g) -> None:
    g.add_argument("--review-threshold", type=float, default=None, help="cells below this calibrated confidence "
                   "are marked for review (default: the model's own, else 0.7)")


def _add_input_checks(g) -> None:
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images with a warning instead of failing (default: fail)")


def _add_preprocessing(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Preprocessing (recorded in the model; prediction applies the same)")
    g.add_argument("--crop", type=float, default=None,
                   help="centre a square of this fraction of the short side on the WBC, e.g. 0.7 (default: whole image)")
    g.add_argument("--denoise", default=None, help="median | gaussian | bilateral | nlmeans (default: none)")
    g.add_argument("--contrast", default=None, help="clahe | histeq on luminance (default: none)")
    g.add_argument("--stain-norm", default=None, help="reinhard | macenko | background (white balance on the plasma) (default: none)")
    g.add_argument("--stain-reference", default=None, help="reference image for --stain-norm (default: built-in)")


def _preprocess_options(args) -> dict:
    d = {"crop": args.crop, "denoise": args.denoise, "contrast": args.contrast, "stain_norm": args.stain_norm}
    if args.stain_reference:
        d["options"] = {"stain_reference": str(Path(args.stain_reference).resolve())}
    return {k: v for k, v in d.items() if v}


def _train_args(p: argparse.ArgumentParser, arch_required: bool = True) -> None:
    g = p.add_argument_group("Input")
    g.add_argument("--data", action="append", required=True,
                   help="class-folder tree, Kaggle/PBC folder or CSV manifest; repeat to combine sources")
    g.add_argument("--val-data", action="append", default=[], help="validation data (default: split off --data)")
    g.add_argument("--val-fraction", type=float, default=0.15,
                   help="fraction held out for validation, groups kept whole (default: 0.15)")
    g.add_argument("--groups", default=None,
                   help="CSV mapping images to groups, e.g. provenance/dataset2_source_map.csv (default: none)")
    g.add_argument("--dedup", action="store_true",
                   help="group duplicate and near-duplicate images before splitting (default: off)")
    g.add_argument("--max-per-class", type=int, default=None,
                   help="subsample training images per class for a reduced budget (default: all)")
    g.add_argument("--cap-each-source", action="store_true",
                   help="apply --max-per-class to each --data source on its own, so a big source does not crowd "
                        "another out of a shared class (default: one cap over all sources)")
    g.add_argument("--refit", action="store_true",
                   help="final fit once the recipe is chosen: train on the train and val splits together with no "
                        "validation and keep the last epoch; no temperature is fitted (docs/decisions/0016) "
                        "(default: off)")
    _add_input_checks(g)
    t = p.add_argument_group("Training")
    if arch_required:
        t.add_argument("--arch", default=None, help="registered model name; see `wbc models` (required unless --fast)")
        t.add_argument("--fast", action="store_true", help="the fastest measured recipe: ImageNet MobileNetV2 (unless "
                       "--arch), 128 px, WBC-centred crop 0.7, one-cycle Adam 3e-4, class weights, 8 epochs, bf16; "
                       "overrides --img-size/--lr/--schedule/--epochs (default: off)")
    t.add_argument("--epochs", type=int, default=10, help="maximum epochs (default: 10)")
    t.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: the model's own)")
    t.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    t.add_argument("--schedule", choices=["onecycle", "constant"], default="onecycle", help="(default: onecycle)")
    t.add_argument("--seed", type=int, default=0, help="(default: 0)")
    t.add_argument("--no-pretrained", action="store_true", help="train from random weights (default: ImageNet "
                   "weights where the model has them)")
    t.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    t.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (default: 5)")
    t.add_argument("--monitor", choices=["val_loss", "val_accuracy"], default="val_loss",
                   help="validation figure that picks the kept checkpoint and drives early stopping (default: val_loss)")
    t.add_argument("--no-augment", action="store_true", help="no rotation/flip/colour augmentation")
    t.add_argument("--augment", default="standard", choices=["standard", "stain", "robust", "robust-jpeg"],
                   help="augmentation recipe; 'stain' adds free rotation, scale, HED stain jitter and blur; "
                   "'robust' (the bundled model's, docs/decisions/0014) adds hue, gamma, resolution loss and noise; "
                   "'robust-jpeg' adds JPEG re-compression (default: standard)")
    t.add_argument("--label-smoothing", type=float, default=0.0, help="(default: 0)")
    t.add_argument("--mixstyle", type=float, default=0.0, metavar="P",
                   help="MixStyle: with probability P per early stage and batch, mix the feature statistics of "
                   "the batch's images (a style augmentation for robustness across labs; 0.5 is the paper's "
                   "setting, docs/decisions/0014) (default: 0, off)")
    h = p.add_argument_group("Hardware")
    h.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="(default: auto)")
    h.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    _add_preprocessing(p)


def _train_config(args, arch: str, out: str):
    from .training import TrainConfig
    return TrainConfig(
        data=args.data, out=out, arch=arch, val_data=args.val_data, val_fraction=args.val_fraction,
        groups=args.groups, dedup=args.dedup, epochs=args.epochs, img_size=args.img_size,
        batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, seed=args.seed,
        pretrained=not args.no_pretrained, class_weights=args.class_weights, patience=args.patience, monitor=args.monitor,
        precision=args.precision, max_per_class=args.max_per_class, cap_each_source=args.cap_each_source,
        refit=args.refit, skip_bad=args.skip_bad,
        resume=getattr(args, "resume", False), augment=not args.no_augment, threads=args.threads,
        augment_preset=args.augment, label_smoothing=args.label_smoothing, mixstyle=args.mixstyle,
        preprocess=_preprocess_options(args), progress=not args.quiet)


def cmd_train(args) -> int:
    from .training import train
    if not args.arch and not args.fast:
        raise WbcError("choose a model with --arch NAME (see `wbc models`), or pass --fast")
    cfg = _train_config(args, args.arch or "mobilenet_v2", args.out)
    if args.fast:
        from .training import fast_config
        cfg = fast_config(cfg, keep_arch=bool(args.arch))
    res = train(cfg)
    print(f"best epoch {res.best_epoch}/{res.epochs_run}: val loss {res.best_val_loss:.4f}, "
          f"val accuracy {res.best_val_accuracy:.4f}, temperature {res.temperature:.3f}, "
          f"{res.wall_seconds / 60:.1f} min -> {res.model_path}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import EvalConfig, evaluate
    m = evaluate(EvalConfig(data=args.data, out=args.out, model=args.model, split=args.split, groups=args.groups,
                            restrict=not args.no_restrict, skip_bad=args.skip_bad, precision=args.precision,
                            batch_size=args.batch_size, backend=args.backend, progress=not args.quiet))
    lo, hi = m["accuracy_ci95"]
    print(f"accuracy {m['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}), balanced accuracy {m['balanced_accuracy']:.4f}, "
          f"macro F1 {m['macro_f1']:.4f} on {m['n_images']} images -> {Path(args.out) / 'report.html'}")
    return 0


def cmd_predict(args) -> int:
    from .data import image_files, handle_bad
    from .errors import BadImageError
    from .counting import review_threshold
    from .inference import load_predictor, predict_files
    paths = image_files(args.paths)
    if not paths:
        raise WbcError(f"no images found in {' '.join(args.paths)}")
    predictor = load_predictor(args.model, precision=args.precision, batch_size=args.batch_size,
                               backend=args.backend)
    threshold = review_threshold(predictor, args.review_threshold)
    bad: list[BadImageError] = []
    preds = list(predict_files(predictor, paths, skip_bad=args.skip_bad, progress=not args.quiet, bad=bad))
    handle_bad(bad, args.skip_bad)  # default: fail with the first few bad files and the count
    # a cell goes to review below the calibrated confidence threshold, or when it is unknown (as in `wbc count`)
    review = [p.unknown or p.confidence < threshold for p in preds]
    if args.format == "json":
        print(json.dumps([{"path": str(p.path), "label": p.label, "confidence": round(p.confidence, 4),
                           "review": r, "unknown": p.unknown,
                           "ood_score": None if p.ood_score is None else round(p.ood_score, 4),
                           "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()}}
                          for p, r in zip(preds, review)], indent=2))
    elif args.format == "csv":
        import csv
        w = csv.writer(sys.stdout)
        w.writerow(["path", "label", "confidence"] + predictor.classes + ["review", "unknown", "ood_score"])
        for p, r in zip(preds, review):
            w.writerow([p.path, p.label, f"{p.confidence:.4f}"] + [f"{p.probabilities[c]:.4f}" for c in predictor.classes]
                       + [int(r), int(p.unknown), "" if p.ood_score is None else f"{p.ood_score:.4f}"])
    else:
        width = max([len(str(p.path)) for p in preds] + [4])
        print(f"{'image':<{width}}  {'type':<13} confidence")
        for p, r in zip(preds, review):  # unknown: unlike any cell the model knows (docs/decisions/0013); its best
            flag = "  UNKNOWN" if p.unknown else "  REVIEW" if r else ""  # guess stays shown, like a low confidence
            print(f"{str(p.path):<{width}}  {p.label:<13} {p.confidence:.3f}{flag}")
    if any(review):
        print(f"{sum(review)} of {len(preds)} images to review: calibrated confidence below {threshold:.3f}"
              + (f", or unlike any cell the model knows ({sum(p.unknown for p in preds)} unknown: not a white blood "
                 "cell, or another lab's images)" if any(p.unknown for p in preds) else ""), file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .models.registry import available, count_parameters, get_spec
    print(f"{'name':<20} {'kind':<10} {'input':>6} {'parameters':>12}  pretrained / reference")
    for name in available():
        spec = get_spec(name)
        n = args.classes
        try:
            params = f"{count_parameters(spec.build(num_classes=n, pretrained=False)):,}"
        except Exception:  # noqa: BLE001 - a classical estimator has no torch parameters
            params = "-"
        note = spec.pretrained or spec.reference or spec.description
        print(f"{name:<20} {spec.kind.value:<10} {spec.img_size:>6} {params:>12}  {note}")
    print(f"(parameter counts for {args.classes} classes)")
    return 0


def cmd_compare(args) -> int:
    from .compare import run_compare
    base = _train_config(args, "", "")
    rows = run_compare(base, [a.strip() for a in args.archs.split(",") if a.strip()],
                       args.test_data or args.data[0], args.out, test_split=args.test_split,
                       progress=not args.quiet)
    print((Path(args.out) / "comparison.md").read_text())
    return 0 if rows else 1


def cmd_audit(args) -> int:
    from .audit import audit, format_report, write_report
    from .data import ImageRecord, discover, image_files
    records = []
    for p in args.paths:
        path = Path(p)
        try:
            records += discover(path).records
        except WbcError:
            records += [ImageRecord(f) for f in image_files([path])]
    if not records:
        raise WbcError(f"no images found in {' '.join(args.paths)}")
    kwargs = {"near_threshold": args.threshold} if args.threshold is not None else {}
    report = audit(records, progress=not args.quiet, **kwargs)
    print(format_report(report))
    if args.out:
        write_report(report, Path(args.out))
    return 0


def cmd_split(args) -> int:
    from collections import Counter
    from .data import discover
    from .splits import three_way, write_split_manifest
    records = []
    for p in args.data:
        records += discover(p, args.groups).records
    if args.dedup:
        from dataclasses import replace
        from .audit import duplicate_groups
        groups = duplicate_groups(records, progress=not args.quiet)
        records = [r if r.group is not None else replace(r, group=groups.get(r.path)) for r in records]
    out = three_way(records, args.val, args.test, args.seed)
    write_split_manifest(out, Path(args.out))
    print(f"{dict(Counter(r.split for r in out))} -> {args.out}")
    return 0


def cmd_count(args) -> int:
    from .counting import CountConfig, run_count
    from .detection import DetectionConfig
    det = DetectionConfig(tile=args.tile) if args.tile else DetectionConfig()
    results = run_count(CountConfig(
        inputs=args.paths, out=args.out, sample_id=args.sample_id, wbc_count=args.wbc_count, model=args.model,
        ranges=args.ranges, age=args.age, sex=args.sex, review_threshold=args.review_threshold,
        rbc_px=args.rbc_diameter, min_cells=args.min_cells, precision=args.precision, backend=args.backend,
        progress=not args.quiet, detection=det))
    for r in results:
        d = r.differential
        pct = ", ".join(f"{k} {v:.0f}%" for k, v in d.percent.items() if v)
        n_unknown = sum(c.unknown for c in r.cells)
        print(f"{d.sample_id}: {d.n_cells} WBC in {d.n_images} field(s), {d.n_review} for review"
              + (f" ({n_unknown} unknown: unlike any cell the model knows)" if n_unknown else "")
              + (f"; {pct}" if pct else "") + (f"; flags: {', '.join(d.flags)}" if d.flags else "")
              + f" -> {r.out_dir / 'report.html'}")
    return 0


def cmd_agreement(args) -> int:
    from .agreement import run_agreement
    res = run_agreement(args.reference, args.test, args.out)
    if res["kind"] == "cells":
        lo, hi = res["kappa_ci95"]
        print(f"{res['n']} cells paired: kappa {res['kappa']:.3f} (95% CI {lo:.3f}-{hi:.3f}), "
              f"agreement {res['observed_agreement']:.3f} -> {Path(args.out) / 'report.html'}")
    else:
        parts = [f"{t} bias {res['per_type'][t]['bland_altman']['bias']:+.1f}" for t in res["types"]]
        print(f"{res['n_samples']} samples: {', '.join(parts)} -> {Path(args.out) / 'report.html'}")
    return 0


def cmd_preprocess(args) -> int:
    from .enhancement import preprocess_files
    opts = _preprocess_options(args)
    opts.pop("crop", None)
    if not any(opts.get(k) for k in ("denoise", "contrast", "stain_norm")):
        raise WbcError("nothing to do: choose at least one of --denoise, --contrast, --stain-norm")
    written = preprocess_files(args.paths, args.out, opts, stain_reference=args.stain_reference,
                               skip_bad=args.skip_bad)  # default: fail naming the unreadable files
    print(f"wrote {len(written)} image(s) and contact_sheet.png -> {args.out}")
    return 0


def cmd_segment(args) -> int:
    from .segmentation import segment_files
    from .errors import BadImageError, BadImagesError
    s = segment_files(args.paths, args.out, progress=not args.quiet)
    if s["unreadable"] and not args.skip_bad:  # the readable images are written; name the others
        raise BadImagesError([BadImageError(*m.split(": ", 1)) for m in s["unreadable"]])
    print(f"{s['segmented']}/{s['images']} image(s) with a WBC, {s['cells']} cell(s), "
          f"{len(s['unreadable'])} unreadable, {s['ms_per_image']} ms/image -> {s['csv']}")
    return 0


def cmd_features(args) -> int:
    from .features import extract_features_to_csv
    from .data import handle_bad, image_files, load_image
    from .errors import BadImageError
    if not args.skip_bad:  # fail before the (long) extraction, naming the unreadable files
        bad = []
        for f in image_files(args.paths):
            try:
                load_image(f)
            except BadImageError as exc:
                bad.append(exc)
        handle_bad(bad, skip_bad=False)
    s = extract_features_to_csv(args.paths, args.out, workers=args.workers, progress=not args.quiet)
    print(f"{s['ok']}/{s['images']} image(s) measured ({s['features']} features), {s['no_cell_found']} with no cell "
          f"found, {s['unreadable']} unreadable, {s['cells_per_second']} images/s -> {s['csv']}")
    return 0


def cmd_calibrate(args) -> int:
    from .calibration import calibrate_model, copy_calibration
    if args.from_model:
        if args.data:
            raise WbcError("--from-model copies a calibration; --data fits one: give one of them")
        s = copy_calibration(args.model, args.from_model, args.out)
        thr = "none" if s["threshold"] is None else f"{s['threshold']:.3f}"
        unk = "none" if s["unknown_threshold"] is None else f"{s['unknown_threshold']:.2f}"
        print(f"temperature {s['temperature_before']:.3f} -> {s['temperature']:.3f}; review threshold {thr}, "
              f"unknown below energy {unk}, copied from {s['copied_from']} -> {args.out}")
        return 0
    if not args.data:
        raise WbcError("give labelled validation data with --data (or copy a calibration with --from-model)")
    s = calibrate_model(args.model, args.data, args.out, split=args.split or None, groups=args.groups,
                        target_accuracy=args.target_accuracy, refit_temperature=not args.keep_temperature,
                        unknown_tpr=args.unknown_tpr, progress=not args.quiet)
    print(f"temperature {s['temperature_before']:.3f} -> {s['temperature']:.3f}; review threshold "
          f"{s['threshold']:.3f}: {100 * s['review_share']:.1f} % of {s['n']} cells to review, "
          f"{100 * s['accuracy_kept']:.1f} % of the rest correct; unknown below energy "
          f"{s['unknown_threshold']:.2f} -> {args.out}")
    return 0


def _head_why(s: dict) -> str:
    """Why wbc adapt kept or re-fitted the head (the held-out shot accuracies of --head auto)."""
    c = s.get("head_choice", {})
    if c.get("mode") != "auto":
        return ""
    return (f" (held-out shots: {100 * c['crossfit_accuracy_refit']:.0f} % re-fitted vs "
            f"{100 * c['accuracy_kept']:.0f} % kept)")


def cmd_adapt(args) -> int:
    from .adapt import AdaptConfig, adapt
    s = adapt(AdaptConfig(data=args.data, out=args.out, model=args.model, unlabelled=args.unlabelled,
                          max_unlabelled=args.max_unlabelled, shots=args.shots or None, split=args.split,
                          groups=args.groups, bn=not args.no_batchnorm, bn_mix=args.bn_mix, head="keep" if args.no_head else args.head, seed=args.seed,
                          self_train=args.self_train, self_train_lr=args.self_train_lr,
                          classes=[c for c in args.classes.split(",") if c.strip()], progress=not args.quiet))
    given = [f"{s['shots']} labelled cells ({', '.join(f'{k} {v}' for k, v in s['per_class'].items())})"] * bool(
        s["shots"]) + [f"{s['unlabelled_images']} unlabelled images"] * bool(s["unlabelled_images"])
    print(f"adapted on {' and '.join(given)}: "
          f"{s['batchnorm_layers_reestimated']} BatchNorm layers re-estimated, head "
          f"{'re-fitted' if s['head_refit'] else 'kept'}{_head_why(s)}, temperature {s['temperature_before']:.2f} -> "
          f"{s['temperature']:.2f}, unknown below energy "
          f"{'(not fitted: < 4 cells)' if s['unknown_threshold'] is None else format(s['unknown_threshold'], '.2f')}, "
          f"{s['seconds']:.0f} s -> {Path(args.out) / 'model.safetensors'}")
    return 0


def cmd_evaluate_ood(args) -> int:
    from .ood import run_ood_evaluation
    r = run_ood_evaluation(args.model, args.data, args.ood, args.out, split=args.split, groups=args.groups,
                           threshold=args.threshold, backend=args.backend, precision=args.precision,
                           batch_size=args.batch_size, progress=not args.quiet)
    print(f"{r['score']} score, unknown below {r['threshold']:.3f} ({r['threshold_source']}): {r['n_in']} "
          f"in-distribution images, {100 * r['in_unknown']:.1f} % of them called unknown")
    for kind, k in {**r["kinds"], "all": r["all"]}.items():
        base = f" (MSP {k['auroc_msp']:.3f})" if "auroc_msp" in k else ""
        print(f"  {kind:<16} n {k['n']:4d}  AUROC {k['auroc']:.3f}{base}  FPR at 95 % TPR "
              f"{100 * k['fpr_at_95_tpr']:5.1f} %  called unknown {100 * k['unknown']:5.1f} %")
    print(f"-> {Path(args.out) / 'ood.json'}")
    return 0


def cmd_export(args) -> int:
    from .export import export_model
    out = export_model(args.model, args.out, args.format, half=args.half, calibration=args.calibration)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_ensemble(args) -> int:
    from .modelio import combine_models, read_info
    out = combine_models(args.models, args.out, half=args.half)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB), the mean of {len(read_info(out).members)} "
          f"networks' logits; "
          f"fit its temperature and thresholds next: wbc calibrate --model {out} --data VAL --out {out}")
    return 0


def cmd_serve(args) -> int:
    from .service import ServiceSettings, serve
    serve(ServiceSettings(host=args.host, port=args.port, data_dir=Path(args.data_dir), db_url=args.db, token=args.token,
                          max_file_mb=args.max_file_mb, max_request_mb=args.max_request_mb, max_files=args.max_files,
                          max_megapixels=args.max_megapixels, model=args.model, precision=args.precision,
                          batch_size=args.batch_size, backend=args.backend, ranges=args.ranges,
                          review_threshold=args.review_threshold))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wbc", description="Automated white-blood-cell differential.")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", "-v", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify single-cell images; REVIEW marks a calibrated confidence below "
                       "the model's review threshold, UNKNOWN an image unlike any cell the model knows "
                       "(docs/decisions/0011, 0013)")
    p.add_argument("paths", nargs="+", help="images or folders")
    _add_model(p)
    _add_review_threshold(p.add_argument_group("Review"))
    g = p.add_argument_group("Output")
    g.add_argument("--format", choices=["table", "csv", "json"], default="table", help="csv and json add every "
                   "class probability, the review and unknown flags and the OOD score (logit energy; the max "
                   "probability for classical models, which call nothing unknown) (default: table)")
    _add_input_checks(g)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="train a registered model")
    _train_args(p)
    o = p.add_argument_group("Output")
    o.add_argument("--out", required=True, help="run folder (model, history.csv, curves.png, split.csv)")
    o.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on labelled images")
    p.add_argument("--data", required=True, help="labelled folder or manifest")
    p.add_argument("--split", default=None, help="split to use (default: 'test' when the data has one, else all)")
    p.add_argument("--groups", default=None, help="group CSV for a group bootstrap CI (default: none)")
    p.add_argument("--no-restrict", action="store_true",
                   help="score over all model classes even if the data has fewer (default: restrict)")
    p.add_argument("--out", required=True, help="output folder")
    _add_model(p)
    _add_input_checks(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="train and evaluate several models on one split")
    _train_args(p, arch_required=False)
    p.add_argument("--archs", required=True, help="comma-separated model names")
    p.add_argument("--test-data", default=None, help="test data (default: the 'test' split of the first --data)")
    p.add_argument("--test-split", default=None, help="split of --test-data to use (default: 'test' if present)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per model)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--classes", type=int, default=8, help="number of classes for the counts (default: 8)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("audit", help="find exact and near-duplicate images within and across splits")
    p.add_argument("paths", nargs="+", help="datasets or folders")
    p.add_argument("--threshold", type=int, default=None, help="Hamming distance for near-duplicates")
    p.add_argument("--out", default=None, help="write pairs.csv and summary.json here")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("split", help="write a leakage-safe train/val/test manifest")
    p.add_argument("--data", action="append", required=True, help="dataset(s) to split")
    p.add_argument("--groups", default=None, help="group CSV (default: none)")
    p.add_argument("--dedup", action="store_true", help="keep duplicates/near-duplicates together")
    p.add_argument("--val", type=float, default=0.15, help="(default: 0.15)")
    p.add_argument("--test", type=float, default=0.15, help="(default: 0.15)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("count", help="find, classify and count every WBC in smear fields: the differential")
    p.add_argument("paths", nargs="+", help="smear field images or folders (a folder is a sample; sub-folders "
                   "holding images are samples too)")
    g = p.add_argument_group("Sample")
    g.add_argument("--sample-id", default=None, help="count all inputs as one sample of this name "
                   "(default: one sample per folder)")
    g.add_argument("--wbc-count", type=float, default=None,
                   help="total WBC count in 10^9/L, for absolute counts (default: none, percentages only)")
    g.add_argument("--age", type=float, default=None, help="patient age in years, selects the reference band "
                   "(default: the adult band)")
    g.add_argument("--sex", choices=["male", "female"], default=None, help="selects sex-specific bands if the "
                   "ranges file has them (default: none)")
    g.add_argument("--ranges", default=None, help="lab reference ranges, JSON or CSV, see docs/reference_ranges.md "
                   "(default: bundled adult ranges)")
    _add_model(p)
    a = p.add_argument_group("Algorithm")
    _add_review_threshold(a)
    a.add_argument("--rbc-diameter", type=float, default=None, help="red-cell diameter in pixels, i.e. the "
                   "magnification (default: measured and pooled per sample)")
    a.add_argument("--min-cells", type=int, default=100, help="fewer leukocytes raise the too_few_cells flag "
                   "(default: 100)")
    a.add_argument("--tile", type=int, default=None, help="tile side in analysis pixels for large images "
                   "(default: 1024)")
    o = p.add_argument_group("Output")
    o.add_argument("--out", required=True, help="output folder: cells.csv, differential.json, annotated/, "
                   "report.html (one sub-folder per sample when there are several)")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("agreement", help="agreement of a test differential with a reference (kappa, Bland-Altman)")
    p.add_argument("--reference", required=True, help="reference CSV: per cell (image,label[,cell_id][,box]) "
                   "or per sample (sample_id + one column per type)")
    p.add_argument("--test", required=True, help="test CSV of the same kind, e.g. cells.csv or samples.csv "
                   "of wbc count")
    p.add_argument("--out", required=True, help="output folder: agreement.json, plots, report.html")
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser("preprocess", help="denoise / enhance contrast / normalise stain; writes a contact sheet")
    p.add_argument("paths", nargs="+", help="images or folders")
    p.add_argument("--out", required=True, help="output folder: <stem>.png and contact_sheet.png")
    p.add_argument("--denoise", default=None, help="median | gaussian | bilateral | nlmeans (default: none)")
    p.add_argument("--contrast", default=None, help="clahe | histeq on luminance (default: none)")
    p.add_argument("--stain-norm", default=None, help="reinhard | macenko | background (white balance on the plasma) (default: none)")
    p.add_argument("--stain-reference", default=None, help="reference image for --stain-norm (default: built-in)")
    _add_input_checks(p)
    p.set_defaults(func=cmd_preprocess, crop=None)

    p = sub.add_parser("segment", help="label WBC nucleus and cytoplasm in cell crops or smear fields")
    p.add_argument("paths", nargs="+", help="images or folders")
    p.add_argument("--out", required=True, help="output folder: <stem>.png label mask (0 background, "
                   "1 cytoplasm, 2 nucleus), <stem>_overlay.png, segmentation.csv")
    _add_input_checks(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("features", help="handcrafted shape/texture/colour features, one CSV row per cell")
    p.add_argument("paths", nargs="+", help="images or folders (class sub-folders fill the label column)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    _add_input_checks(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("calibrate", help="fit temperature, the review and the unknown threshold on validation data")
    p.add_argument("--model", "-m", default=None, help="run folder or .safetensors model (default: the bundled model)")
    p.add_argument("--data", action="append", default=[], help="labelled validation data; repeat to combine")
    p.add_argument("--from-model", default=None, help="copy the temperature and thresholds of this model instead "
                   "of fitting them: the validated twin of a `wbc train --refit` model (docs/decisions/0016)")
    p.add_argument("--split", default="val", help="split of a manifest to use; '' for all images (default: val)")
    p.add_argument("--groups", default=None, help="CSV mapping images to groups (default: none)")
    p.add_argument("--target-accuracy", type=float, default=0.98,
                   help="accuracy the cells kept out of review must reach on this data (default: 0.98)")
    p.add_argument("--keep-temperature", action="store_true", help="only choose the thresholds (default: refit)")
    p.add_argument("--unknown-tpr", type=float, default=0.95, help="share of these cells that must pass as known; "
                   "images scoring below the rest are called unknown (docs/decisions/0013) (default: 0.95)")
    p.add_argument("--out", required=True, help="model file to write (may be the input file)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("adapt", help="adapt a model to a new lab from a few labelled cells per class and/or "
                       "unlabelled ones")
    p.add_argument("--model", "-m", default=None, help="run folder or .safetensors model (default: the bundled model)")
    p.add_argument("--data", action="append", default=[], help="the lab's labelled cells (class folders or "
                   "manifest); repeat to combine (default: none)")
    p.add_argument("--unlabelled", action="append", default=[], help="the lab's unlabelled cell images (folders, "
                   "files or a manifest; labels ignored): BatchNorm statistics only, no labels needed; repeatable "
                   "(default: none)")
    p.add_argument("--max-unlabelled", type=int, default=2000, help="at most this many unlabelled images, drawn at "
                   "random (default: 2000)")
    p.add_argument("--out", required=True, help="run folder: model.safetensors, adapt.json, shots.csv")
    p.add_argument("--shots", type=int, default=20, help="cells per class used, distinct groups first; 0 = all "
                   "(default: 20)")
    p.add_argument("--split", default=None, help="use only this split of a manifest, for --data and --unlabelled "
                   "(default: all rows)")
    p.add_argument("--groups", default=None, help="CSV mapping images to groups/source cells (default: none)")
    p.add_argument("--no-batchnorm", action="store_true", help="keep the BatchNorm statistics (default: re-estimate)")
    p.add_argument("--bn-mix", type=float, default=1.0, help="weight of the lab's BatchNorm statistics against the "
                   "original ones; lower keeps more of the original domain (default: 1)")
    p.add_argument("--head", choices=("refit", "keep", "auto"), default="refit",
                   help="classifier head: re-fit it on the shots, keep it, or auto = re-fit only if re-fitted "
                        "heads classify shots they did not see (2-fold cross-fitting) better than the kept one; "
                        "auto keeps more of the original domain and adapts less (docs/decisions/0008) "
                        "(default: refit)")
    p.add_argument("--no-head", action="store_true", help="same as --head keep")
    p.add_argument("--self-train", type=int, default=0, metavar="EPOCHS",
                   help="with --unlabelled only: after the BatchNorm step, this many epochs of label-free "
                        "self-training of the feature extractor (SHOT: confident, diverse predictions and "
                        "feature-centroid pseudo-labels; docs/decisions/0017) (default: 0, BatchNorm only)")
    p.add_argument("--self-train-lr", type=float, default=1e-3, help="SGD learning rate of --self-train "
                   "(default: 0.001)")
    p.add_argument("--classes", default="", help="comma-separated classes the lab's unlabelled images can belong "
                   "to, for --self-train, e.g. neutrophil,eosinophil,lymphocyte,monocyte (default: all the model's)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("evaluate-ood", help="how well the model tells its cells from other images (the unknown "
                       "verdict, docs/decisions/0013)")
    g = p.add_argument_group("Input")
    g.add_argument("--data", action="append", required=True, help="cells the model should know (folder or manifest; "
                   "its test split if it has one); repeat to combine")
    g.add_argument("--ood", action="append", required=True, help="images that are not such cells, or folders of them "
                   "(sub-folders are reported as kinds, e.g. OUT/test of scripts/make_ood_set.py); repeatable")
    g.add_argument("--split", default=None, help="split of --data (default: 'test' when it has one, else all)")
    g.add_argument("--groups", default=None, help="CSV mapping images to groups (default: none)")
    _add_model(p)
    a = p.add_argument_group("Algorithm")
    a.add_argument("--threshold", type=float, default=None, help="unknown threshold on the score (default: the "
                   "model's own; a classical model has none: the 95 %% TPR point of --data, reported only)")
    o = p.add_argument_group("Output")
    o.add_argument("--out", required=True, help="output folder: ood.json, scores.csv")
    p.set_defaults(func=cmd_evaluate_ood)

    p = sub.add_parser("serve", help="the review workstation and API: upload, review and sign off differentials")
    g = p.add_argument_group("Server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --token "
                   "(default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    g.add_argument("--token", default=None, help="API token required for every change (default: env WBC_TOKEN, "
                   "else none, which only loopback allows)")
    g = p.add_argument_group("Storage")
    g.add_argument("--data-dir", default="wbc-data", help="uploaded fields, analyses and the SQLite database "
                   "(default: ./wbc-data)")
    g.add_argument("--db", default=None, help="database URL, e.g. postgresql://user:pass@host/wbc "
                   "(default: sqlite in --data-dir)")
    g = p.add_argument_group("Limits")
    g.add_argument("--max-file-mb", type=float, default=32, help="largest uploaded image (default: 32)")
    g.add_argument("--max-request-mb", type=float, default=512, help="largest upload request (default: 512)")
    g.add_argument("--max-files", type=int, default=500, help="files per request (default: 500)")
    g.add_argument("--max-megapixels", type=float, default=100, help="largest image, checked before decoding "
                   "(default: 100)")
    _add_model(p)
    g = p.add_argument_group("Analysis")
    g.add_argument("--ranges", default=None, help="lab reference ranges, JSON or CSV (default: bundled adult ranges)")
    _add_review_threshold(g)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ensemble", help="combine models with the same classes and preprocessing into one "
                       "(the mean of their logits; docs/decisions/0015)")
    p.add_argument("models", nargs="+", help="run folders or model files (at least two)")
    p.add_argument("--half", action="store_true", help="store fp16 tensors (half the size)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("export", help="write a trained model in another format")
    p.add_argument("--model", "-m", default=None, help="run folder or model file (default: the bundled model)")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "onnx", "onnx-int8"],
                   help="(default: safetensors)")
    p.add_argument("--calibration", action="append", default=[], help="images, folders or manifests (their val split) "
                   "that calibrate the int8 activation ranges (onnx-int8 only; repeatable; default: none)")
    p.add_argument("--half", action="store_true", help="store fp16 tensors (half the size)")
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="wbc: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except WbcError as exc:
        print(f"wbc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wbc: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
