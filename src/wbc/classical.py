"""Classical classifiers: hand-crafted cell features + scikit-learn estimators, in the model registry.

Each model is one scikit-learn :class:`~sklearn.pipeline.Pipeline`::

    features (wbc.features.CellFeatureExtractor: preprocessing -> segmentation -> 150 features)
      -> impute (median; a cell whose segmentation failed is a NaN row)
      -> scale (StandardScaler)
      -> estimator (svm | random-forest | knn | mlp | naive-bayes | logistic-regression)

Training (:func:`train_classical`, reached through ``wbc train --arch svm ...``) measures the
features of the training images once (cached on disk, :func:`wbc.features.cached_matrix`),
chooses hyper-parameters by grouped, stratified cross-validation on the training split only
(:class:`~sklearn.model_selection.StratifiedGroupKFold`, so augmented copies of one source
cell never sit on both sides of a fold), refits on the whole training split and reports the
validation split.

Models are saved with skops (``model.skops``), never pickle: loading only instantiates types
from an allow-list (scikit-learn, NumPy and :class:`wbc.features.CellFeatureExtractor`) and
refuses anything else.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .data import ImageRecord, handle_bad
from .errors import BadImageError, WbcError
from .features import (FEATURE_NAMES, FEATURES, NO_CELL, UNREADABLE, CellFeatureExtractor, FeatureConfig,
                       cached_matrix)
from .modelio import ModelInfo
from .models.registry import ModelKind, ModelSpec, register
from .preprocessing import PreprocessConfig

log = logging.getLogger(__name__)

FORMAT = "wbc-classical"
FORMAT_VERSION = 1
#: Images are processed at native resolution, downscaled only when their longer side exceeds this.
CLASSICAL_IMG_SIZE = 400
CV_FOLDS = 3


@dataclass(frozen=True)
class ClassicalModel:
    name: str
    make: Callable[[int, bool], Any]  # (seed, balanced) -> unfitted estimator
    grid: dict[str, list]  # hyper-parameter grid for the 'clf' step
    description: str
    reference: str


def _svm(seed: int, balanced: bool):
    return SVC(kernel="rbf", C=10.0, gamma="scale", class_weight="balanced" if balanced else None, random_state=seed)


def _rf(seed: int, balanced: bool):
    return RandomForestClassifier(n_estimators=300, class_weight="balanced" if balanced else None,
                                  random_state=seed, n_jobs=1)


def _knn(seed: int, balanced: bool):
    return KNeighborsClassifier(n_neighbors=5)


def _mlp(seed: int, balanced: bool):
    return MLPClassifier(hidden_layer_sizes=(256, 128), alpha=1e-3, early_stopping=True, max_iter=400,
                         random_state=seed)


def _nb(seed: int, balanced: bool):
    return GaussianNB()


def _lr(seed: int, balanced: bool):
    return LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced" if balanced else None)


MODELS: dict[str, ClassicalModel] = {m.name: m for m in [
    ClassicalModel("svm", _svm, {"C": [1.0, 10.0, 100.0], "gamma": [0.002, "scale", 0.02]},
                   "RBF support-vector machine on hand-crafted cell features",
                   "Cortes & Vapnik 1995; Putzu et al. 2014 (leukocyte SVM pipeline)"),
    ClassicalModel("random-forest", _rf, {"max_features": ["sqrt", 0.2], "min_samples_leaf": [1, 3]},
                   "random forest (300 trees) on hand-crafted cell features", "Breiman 2001"),
    ClassicalModel("knn", _knn, {"n_neighbors": [3, 7, 15, 31], "weights": ["uniform", "distance"]},
                   "k-nearest neighbours on standardised cell features", "Cover & Hart 1967"),
    ClassicalModel("mlp", _mlp, {"hidden_layer_sizes": [(128,), (256, 128)], "alpha": [1e-4, 1e-3, 1e-2]},
                   "multi-layer perceptron on hand-crafted cell features", "Rumelhart et al. 1986"),
    ClassicalModel("naive-bayes", _nb, {"var_smoothing": [1e-9, 1e-6, 1e-3, 1e-1]},
                   "Gaussian naive Bayes on standardised cell features", "e.g. Hastie et al. 2009, ch. 6.6.3"),
    ClassicalModel("logistic-regression", _lr, {"C": [0.01, 0.1, 1.0, 10.0]},
                   "multinomial logistic regression on standardised cell features", "Cox 1958"),
]}


def with_probabilities(clf, seed: int = 0):
    """The estimator itself, or, for an SVM, the SVM with Platt-scaled probabilities (3-fold sigmoid calibration)."""
    if isinstance(clf, SVC):
        return CalibratedClassifierCV(clf, method="sigmoid", cv=3, ensemble=False)
    return clf


def make_pipeline(name: str, feature_config: FeatureConfig | None = None, *, seed: int = 0,
                  balanced: bool = False, for_search: bool = False) -> Pipeline:
    """The unfitted pipeline ``features -> impute -> scale -> clf`` of a classical model.

    ``for_search`` leaves the SVM uncalibrated (no probabilities needed to score accuracy, 3x cheaper).
    """
    try:
        model = MODELS[name]
    except KeyError:
        raise WbcError(f"unknown classical model '{name}'; available: {', '.join(MODELS)}") from None
    clf = model.make(seed, balanced)
    return Pipeline([
        ("features", CellFeatureExtractor((feature_config or FeatureConfig()).to_dict())),
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("clf", clf if for_search else with_probabilities(clf, seed)),
    ])


def _register_all() -> None:
    for m in MODELS.values():
        register(ModelSpec(name=m.name, build=lambda num_classes=None, pretrained=False, _n=m.name: make_pipeline(_n),
                           img_size=CLASSICAL_IMG_SIZE, kind=ModelKind.CLASSICAL, description=m.description,
                           reference=m.reference, min_img_size=64))


_register_all()


# --- saving and loading (skops, allow-listed types only) --------------------------------------

#: Types skops does not trust by default that a wbc model legitimately holds; nothing else loads.
_TRUSTED_EXACT = frozenset({"wbc.features.CellFeatureExtractor", "numpy.dtype", "sklearn.tree._tree.Tree",
                            "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
                            "sklearn.neural_network._stochastic_optimizers.SGDOptimizer"})
_TRUSTED_PREFIXES = ("sklearn.",)  # scikit-learn estimators and their state (skops' own default policy)


def _untrusted(path: Path) -> list[str]:
    import skops.io as sio

    return sio.get_untrusted_types(file=path)


def save_classical(path: Path, pipeline: Pipeline, info: ModelInfo) -> None:
    """Write pipeline + model info to ``path`` (skops format) atomically."""
    import skops.io as sio

    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info.to_json(),
               "feature_names": list(FEATURE_NAMES), "pipeline": pipeline}
    tmp = path.with_name(path.name + ".partial")
    sio.dump(payload, tmp)
    os.replace(tmp, path)


def load_classical(path: str | Path) -> tuple[Pipeline, ModelInfo]:
    """Load a ``.skops`` model, instantiating only allow-listed types.

    Raises:
        WbcError: the file is not a wbc classical model, or it holds a type outside the allow-list
            (which could run code on load).
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise WbcError(f"{path}: model not found")
    try:
        untrusted = _untrusted(path)
    except Exception as exc:  # noqa: BLE001 - skops raises many types on a corrupt archive
        raise WbcError(f"{path}: not a readable skops model file ({exc})") from None
    refused = [t for t in untrusted if not (t.startswith(_TRUSTED_PREFIXES) or t in _TRUSTED_EXACT)]
    if refused:
        raise WbcError(f"{path}: refusing to load; the file contains types outside wbc's allow-list: "
                       f"{', '.join(sorted(refused)[:5])}")
    try:
        payload = sio.load(path, trusted=untrusted)
    except Exception as exc:  # noqa: BLE001
        raise WbcError(f"{path}: could not load the skops model ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WbcError(f"{path}: a skops file, but not a wbc classical model")
    if payload.get("feature_names") != list(FEATURE_NAMES):
        raise WbcError(f"{path}: trained with a different feature set (wbc version mismatch); retrain the model")
    return payload["pipeline"], ModelInfo.from_json(payload["info"])


# --- prediction -----------------------------------------------------------------------------


def _tail(pipeline: Pipeline) -> Pipeline:
    """The pipeline after the feature step (feature matrix -> probabilities)."""
    return pipeline[1:]


class ClassicalPredictor:
    """Predictor for a ``.skops`` model, implementing :class:`wbc.inference.Classifier`.

    ``predict_paths`` caches features on disk (keyed by file and feature config) and keeps
    the last feature matrix in ``last_features`` (rows aligned with the yielded paths) for
    :func:`permutation_importances`. Images without a detectable cell are still predicted
    (from imputed features), counted in ``n_no_cell`` and warned about.
    """

    def __init__(self, path: str | Path, *, workers: int = 1, cache: bool = True):
        from .modelio import resolve_model_path

        self.path = resolve_model_path(path)
        self.pipeline, self.info = load_classical(self.path)
        self.classes = list(self.info.classes)
        self.workers = workers
        self.cache = cache
        self.feature_config = FeatureConfig.from_dict(self.pipeline.named_steps["features"].config or {})
        self.last_features: np.ndarray = np.zeros((0, len(FEATURE_NAMES)), np.float32)
        self.last_paths: list[Path] = []
        self.n_no_cell = 0

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for a feature matrix (N, F)."""
        if len(X) == 0:
            return np.zeros((0, len(self.classes)))
        return _tail(self.pipeline).predict_proba(np.asarray(X, np.float32))

    def predict_images(self, images: list[Image.Image]) -> np.ndarray:
        X = self.pipeline.named_steps["features"].transform([np.asarray(im.convert("RGB")) for im in images])
        self.n_no_cell += int(np.isnan(X).all(axis=1).sum())
        return self.predict_features(X)

    def features_for_paths(self, paths: list[Path], progress: bool = False) -> tuple[np.ndarray, list[str]]:
        if self.cache:
            return cached_matrix(paths, self.feature_config, workers=self.workers, progress=progress,
                                 desc="features")
        from .features import extract_matrix
        return extract_matrix(paths, self.feature_config, workers=self.workers, progress=progress)

    def report_sections(self, labels: list[str], out: Path) -> list:
        """Extra sections of the evaluation report: feature importances on the evaluated cells."""
        return importance_sections(self, labels, Path(out))

    def predict_paths(self, paths: Iterable[Path], *, skip_bad: bool = False, progress: bool = False,
                      bad: list[BadImageError] | None = None) -> Iterator[tuple[Path, np.ndarray]]:
        """Yield ``(path, probabilities)`` per readable image; unreadable ones go to ``bad`` (or raise)."""
        paths = [Path(p) for p in paths]
        X, status = self.features_for_paths(paths, progress)
        keep = []
        for i, (p, st) in enumerate(zip(paths, status)):
            if st.startswith(UNREADABLE):
                exc = BadImageError(p, st.split(": ", 1)[-1])
                if bad is not None:
                    bad.append(exc)
                elif not skip_bad:
                    raise exc
                continue
            keep.append(i)
        self.n_no_cell = sum(status[i] == NO_CELL for i in keep)
        self.last_features = X[keep]
        self.last_paths = [paths[i] for i in keep]
        probs = self.predict_features(self.last_features)
        for i, p in zip(keep, probs):
            yield paths[i], p


def importance_sections(predictor: "ClassicalPredictor", labels: list[str], out: Path, top: int = 20) -> list:
    """Report sections for ``wbc evaluate``: permutation importances of the features just predicted.

    Writes ``out/importances.csv`` (every feature) and ``out/importances.png`` (the ``top`` ones).
    """
    from .io import write_csv
    from .plots import plot_importances
    from .report import image_section, table_section

    rows = permutation_importances(predictor, None, labels)
    if not rows:
        return []
    write_csv(out / "importances.csv", rows, ["feature", "region", "importance", "std"])
    plot_importances(rows[:top], out / "importances.png")
    text = ("Accuracy lost when one feature is shuffled (permutation importance, Breiman 2001; 3 repeats on up "
            "to 1,000 of the evaluated cells). Correlated features share their importance, so a low value does "
            "not mean a feature is useless. All features: importances.csv.")
    return [image_section(f"Feature importances (top {min(top, len(rows))})", out / "importances.png"),
            table_section("Most important features", [{**r, "importance": round(r["importance"], 4),
                                                       "std": round(r["std"], 4)} for r in rows[:top]], text=text)]


def permutation_importances(predictor: ClassicalPredictor, X: np.ndarray | None, y, *, n_repeats: int = 3,
                            max_samples: int | None = 1000, seed: int = 0, top: int | None = None) -> list[dict]:
    """Permutation importance (Breiman 2001) of every feature: the accuracy lost when it is shuffled.

    Args:
        predictor: a loaded classical model.
        X: feature matrix (N, F); ``None`` uses ``predictor.last_features`` (after ``predict_paths``).
        y: true labels (class names or indices into ``predictor.classes``), aligned with ``X``.
        n_repeats: shuffles per feature.
        max_samples: subsample this many rows (stratified by nothing; seeded) to bound the cost.
        top: keep only the ``top`` most important features.

    Returns:
        Rows ``{"feature", "region", "importance", "std"}``, most important first.
    """
    from sklearn.inspection import permutation_importance

    X = predictor.last_features if X is None else np.asarray(X, np.float32)
    y = np.asarray([predictor.classes.index(v) if isinstance(v, str) else int(v) for v in y])
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    if len(X) == 0:
        return []
    rng = np.random.default_rng(seed)
    if max_samples and len(X) > max_samples:
        idx = rng.choice(len(X), max_samples, replace=False)
        X, y = X[idx], y[idx]
    res = permutation_importance(_tail(predictor.pipeline), X, y, scoring="accuracy", n_repeats=n_repeats,
                                 random_state=seed, n_jobs=1)
    regions = {f.name: f.region for f in FEATURES}
    rows = [{"feature": n, "region": regions[n], "importance": float(m), "std": float(s)}
            for n, m, s in zip(FEATURE_NAMES, res.importances_mean, res.importances_std)]
    rows.sort(key=lambda r: -r["importance"])
    return rows[:top] if top else rows


# --- training -------------------------------------------------------------------------------


def _grid(name: str, n_fit: int) -> dict[str, list]:
    """The 'clf' grid as pipeline parameters, without neighbour counts a CV fold cannot hold."""
    grid = dict(MODELS[name].grid)
    if "n_neighbors" in grid:
        grid["n_neighbors"] = [k for k in grid["n_neighbors"] if k < n_fit] or [1]
    return {f"clf__{k}": v for k, v in grid.items()}


def _feature_config(cfg, img_size: int) -> FeatureConfig:
    pre = dict(cfg.preprocess or {})
    if pre.get("crop"):
        log.warning("classical models segment the cell themselves; preprocess crop=%s is ignored", pre["crop"])
    return FeatureConfig(denoise=pre.get("denoise"), contrast=pre.get("contrast"), stain_norm=pre.get("stain_norm"),
                         options=dict(pre.get("options") or {}), max_side=img_size)


def _groups(records: list[ImageRecord]) -> np.ndarray:
    return np.array([r.group if r.group is not None else str(r.path) for r in records])


def _features(records: list[ImageRecord], fcfg: FeatureConfig, cfg, desc: str
              ) -> tuple[np.ndarray, list[ImageRecord], int]:
    """Cached features; unreadable images raise (or are dropped with ``skip_bad``); returns n without a cell."""
    X, status = cached_matrix([r.path for r in records], fcfg, workers=_workers(cfg), progress=cfg.progress,
                              desc=desc)
    bad = [BadImageError(r.path, s.split(": ", 1)[-1]) for r, s in zip(records, status) if s.startswith(UNREADABLE)]
    handle_bad(bad, cfg.skip_bad)
    keep = [i for i, s in enumerate(status) if not s.startswith(UNREADABLE)]
    n_no_cell = sum(status[i] == NO_CELL for i in keep)
    return X[keep], [records[i] for i in keep], n_no_cell


def _workers(cfg) -> int:
    return max(1, int(os.environ.get("WBC_FEATURE_WORKERS", cfg.threads or 1)))


def train_classical(cfg) -> "TrainResult":  # noqa: F821 - TrainResult imported lazily (circular import)
    """Train the classical model ``cfg.arch`` (a :class:`wbc.training.TrainConfig`) into ``cfg.out``.

    Writes ``model.skops``, ``run.json``, ``split.csv`` and ``cv_results.csv``.
    """
    from .io import write_csv, write_json
    from .models.registry import get_spec
    from .splits import write_split_manifest
    from .training import TrainResult, ordered_classes, prepare_split

    t0 = time.perf_counter()
    spec = get_spec(cfg.arch)
    run_dir = Path(cfg.out)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise WbcError(f"{run_dir}: output folder is not empty; choose another --out")
    img_size = cfg.img_size or spec.img_size
    fcfg = _feature_config(cfg, img_size)
    train_recs, val_recs = prepare_split(cfg)
    classes = ordered_classes(r.label for r in train_recs)
    if len(classes) < 2:
        raise WbcError(f"need at least 2 classes to train, found {classes}")
    unknown_val = sorted({r.label for r in val_recs} - set(classes))
    if unknown_val:
        raise WbcError(f"validation classes {unknown_val} are not in the training data")
    X_train, train_recs, no_cell_train = _features(train_recs, fcfg, cfg, "features (train)")
    X_val, val_recs, no_cell_val = _features(val_recs, fcfg, cfg, "features (val)") if val_recs else \
        (np.zeros((0, len(FEATURE_NAMES)), np.float32), [], 0)
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the images have decoded (as in wbc.training.train)
    write_split_manifest([ImageRecord(r.path, r.label, r.group, "train") for r in train_recs]
                         + [ImageRecord(r.path, r.label, r.group, "val") for r in val_recs], run_dir / "split.csv")
    index = {c: i for i, c in enumerate(classes)}
    y_train = np.array([index[r.label] for r in train_recs])
    y_val = np.array([index[r.label] for r in val_recs])
    groups = _groups(train_recs)

    pipeline = make_pipeline(spec.name, fcfg, seed=cfg.seed, balanced=cfg.class_weights, for_search=True)
    tail = _tail(pipeline)
    n_groups_min = min(len(set(groups[y_train == c])) for c in range(len(classes)))
    folds = min(CV_FOLDS, n_groups_min)
    grid = _grid(spec.name, n_fit=len(y_train) * (folds - 1) // max(folds, 1))
    search_seconds = 0.0
    best_params: dict = {}
    cv_rows: list[dict] = []
    if folds >= 2 and len(set(groups)) >= folds:
        t_search = time.perf_counter()
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
        search = GridSearchCV(tail, grid, scoring="accuracy", cv=cv, n_jobs=1, refit=False,
                              verbose=1 if cfg.progress else 0)
        search.fit(X_train, y_train, groups=groups)
        best_params = search.best_params_
        search_seconds = time.perf_counter() - t_search
        res = search.cv_results_
        for i in range(len(res["params"])):
            cv_rows.append({"params": json.dumps(res["params"][i], default=str),
                            "mean_accuracy": round(float(res["mean_test_score"][i]), 5),
                            "std_accuracy": round(float(res["std_test_score"][i]), 5),
                            "rank": int(res["rank_test_score"][i]),
                            "fit_seconds": round(float(res["mean_fit_time"][i]), 2)})
        write_csv(run_dir / "cv_results.csv", cv_rows, ["params", "mean_accuracy", "std_accuracy", "rank",
                                                       "fit_seconds"])
        log.info("%s: best CV accuracy %.4f with %s", spec.name, search.best_score_, best_params)
    else:
        log.warning("too few groups per class for %d-fold cross-validation; using default hyper-parameters", CV_FOLDS)
    final_clf = clone(pipeline.named_steps["clf"]).set_params(**{k[5:]: v for k, v in best_params.items()})
    final_clf = with_probabilities(final_clf, cfg.seed)
    pipeline = Pipeline(pipeline.steps[:-1] + [("clf", final_clf)])
    _tail(pipeline).fit(X_train, y_train)

    val_acc, val_loss = float("nan"), float("nan")
    if len(y_val):
        from sklearn.metrics import log_loss

        probs = _tail(pipeline).predict_proba(X_val)
        val_acc = float((probs.argmax(1) == y_val).mean())
        val_loss = float(log_loss(y_val, probs, labels=list(range(len(classes)))))
    wall = time.perf_counter() - t0
    pre = PreprocessConfig(img_size=img_size, denoise=fcfg.denoise, contrast=fcfg.contrast,
                           stain_norm=fcfg.stain_norm, options=fcfg.options)
    info = ModelInfo(arch=spec.name, classes=classes, preprocess=pre, training={
        "config": _jsonable(asdict(cfg)), "n_train": len(train_recs), "n_val": len(val_recs),
        "command": shlex.join(sys.argv), "kind": "classical", "best_params": _jsonable(best_params),
        "cv_folds": folds, "cv_best_accuracy": max((r["mean_accuracy"] for r in cv_rows), default=None),
        "search_seconds": round(search_seconds, 1), "val_accuracy": val_acc, "val_log_loss": val_loss,
        "no_cell_found": {"train": no_cell_train, "val": no_cell_val}, "features": len(FEATURE_NAMES),
        "feature_config": fcfg.to_dict(), "wall_seconds": round(wall, 1)})
    save_classical(run_dir / "model.skops", pipeline, info)
    if no_cell_train or no_cell_val:
        log.warning("%d training and %d validation images had no detectable cell; they were kept with imputed "
                    "features", no_cell_train, no_cell_val)
    result = TrainResult(run_dir, run_dir / "model.skops", 0, val_loss, val_acc, 0, wall, 1.0, classes,
                         len(train_recs), len(val_recs))
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    summary.update({"best_params": _jsonable(best_params), "cv_folds": folds,
                    "cv_best_accuracy": info.training["cv_best_accuracy"],
                    "no_cell_found": info.training["no_cell_found"]})
    write_json(run_dir / "run.json", {"result": summary, "config": _jsonable(asdict(cfg))})
    return result


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))
