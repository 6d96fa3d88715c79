"""Training a registered neural model: Adam + cross-entropy, augmentation, best-val-loss
checkpoint, early stopping, resume, temperature calibration.

Images are decoded once (:mod:`wbc.imageset`) and augmented per batch on the CPU
(:mod:`wbc.augment`); the model runs channels_last under bf16 autocast where the CPU has
native bf16 (``--precision``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .progress import progress as progress_bar

from . import cpu
from .augment import PRESETS, augment, mixstyle, model_input, normalise, style_stages, to_float
from .calibration import fit_temperature
from .classes import PBC_CLASSES
from .data import Dataset, ImageRecord, discover
from .errors import WbcError
from .imageset import decode_images
from .modelio import ModelInfo, save_model
from .models.registry import ModelKind, count_parameters, get_spec
from .ood import energy, unknown_threshold
from .preprocessing import PreprocessConfig
from .splits import check_disjoint, split_off, write_split_manifest

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    arch: str = "mobilenet_v2"
    val_data: list[str] = field(default_factory=list)
    val_fraction: float = 0.15
    groups: str | None = None
    dedup: bool = False  # group near-duplicate images (wbc.audit) before splitting
    epochs: int = 10
    img_size: int | None = None  # None: the architecture's default
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # or "constant"
    seed: int = 0
    pretrained: bool = True
    class_weights: bool = False
    patience: int = 5
    monitor: str = "val_loss"  # or "val_accuracy": which validation figure picks the kept checkpoint
    precision: str = "auto"
    max_per_class: int | None = None  # subsample the training set (reduced budgets)
    cap_each_source: bool = False  # apply max_per_class to each --data source separately
    refit: bool = False  # final fit: train on the train and val splits together, no validation, keep the last epoch
    skip_bad: bool = False
    resume: bool = False
    augment: bool = True
    augment_preset: str = "standard"  # a key of wbc.augment.PRESETS
    label_smoothing: float = 0.0
    mixstyle: float = 0.0  # probability per stage and batch of MixStyle feature-statistics mixing (0: off)
    target_accuracy: float | None = None  # stop once validation accuracy reaches this (time-to-accuracy runs)
    max_minutes: float | None = None  # stop after the epoch that exceeds this wall-time budget
    threads: int | None = None
    preprocess: dict = field(default_factory=dict)  # denoise/contrast/stain_norm options
    progress: bool = True


#: ``wbc train --fast``: the fastest honest route measured on a 2-core CPU (docs/benchmarks.md: 97 % PBC
#: validation accuracy in ~3.5 min): an ImageNet MobileNetV2 at a reduced 128 px input on the WBC-centred
#: crop, one-cycle Adam 3e-4, class weights, bf16 autocast + channels_last (automatic on this CPU).
FAST_RECIPE = {"arch": "mobilenet_v2", "img_size": 128, "lr": 3e-4, "schedule": "onecycle", "class_weights": True,
               "epochs": 8, "precision": "auto", "pretrained": True}


def fast_config(cfg: "TrainConfig", keep_arch: bool = False) -> "TrainConfig":
    """``cfg`` with the :data:`FAST_RECIPE` applied (and crop 0.7 unless a crop is set)."""
    from dataclasses import replace
    recipe = {k: v for k, v in FAST_RECIPE.items() if not (keep_arch and k == "arch")}
    return replace(cfg, **recipe, preprocess={"crop": 0.7, **cfg.preprocess})


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    epochs_run: int
    wall_seconds: float
    temperature: float
    classes: list[str]
    n_train: int
    n_val: int


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def training_records(ds: Dataset) -> list[ImageRecord]:
    """The records of a dataset that are meant for training (its 'train' split if it has one)."""
    if ds.splits:
        if "train" not in ds.splits:
            raise WbcError(f"{ds.root}: has splits {ds.splits} but no 'train' split")
        return ds.split("train").records
    return ds.records


def validation_records(ds: Dataset) -> list[ImageRecord]:
    if "val" in ds.splits:
        return ds.split("val").records
    if "test" in ds.splits and "train" not in ds.splits:
        return ds.split("test").records
    return ds.records if not ds.splits else []


def ordered_classes(labels) -> list[str]:
    present = set(labels)
    return [c for c in PBC_CLASSES if c in present] + sorted(present - set(PBC_CLASSES))


def _subsample(records: list[ImageRecord], per_class: int, seed: int) -> list[ImageRecord]:
    rng = random.Random(seed)
    by_class: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    out = []
    for label in sorted(by_class):
        recs = by_class[label]
        out += rng.sample(recs, per_class) if len(recs) > per_class else recs
    return out


def prepare_split(cfg: TrainConfig) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Resolve the training and validation records (leakage-safe)."""
    if cfg.cap_each_source and not cfg.max_per_class:
        raise WbcError("--cap-each-source applies --max-per-class to each --data source: give --max-per-class too")
    if cfg.refit and cfg.val_data:
        raise WbcError("--refit trains on the validation data too: drop --val-data")
    train, val, held_in_data, source_of = [], [], [], {}
    for i, path in enumerate(cfg.data):
        ds = discover(path, cfg.groups)
        source_of.update((r.path, i) for r in ds.records)
        train += training_records(ds)
        held_in_data += validation_records(ds) if ds.splits and "val" in ds.splits else []
    if cfg.refit:
        # the final fit after a recipe and budget were chosen on validation: the held-in validation
        # split joins the training data and nothing is held out (docs/decisions/0016)
        train += held_in_data
    elif cfg.val_data:
        for path in cfg.val_data:
            ds = discover(path, cfg.groups)
            val += validation_records(ds) or ds.records
    elif held_in_data:
        val = held_in_data
    else:
        if cfg.dedup:
            from .audit import duplicate_groups
            groups = duplicate_groups(train, progress=cfg.progress)
            train = [r if r.group is not None else ImageRecord(r.path, r.label, groups.get(r.path), r.split)
                     for r in train]
        train, val = split_off(train, cfg.val_fraction, cfg.seed)
    if any(r.label is None for r in train):
        raise WbcError("training images must be labelled (class folders or a manifest label column)")
    shared = check_disjoint(train, val)
    if shared:
        log.warning("%d groups appear in both training and validation data", shared)
    if cfg.max_per_class:
        if cfg.cap_each_source:
            # each --data source capped on its own: a source of augmented copies (Kaggle) does not crowd
            # out the unique images of another (PBC) within a shared class
            train = [r for i in range(len(cfg.data)) for r in
                     _subsample([r for r in train if source_of.get(r.path, 0) == i], cfg.max_per_class, cfg.seed)]
        else:
            train = _subsample(train, cfg.max_per_class, cfg.seed)
    return train, val


def _batches(n: int, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images_u8: torch.Tensor, pre: PreprocessConfig,
                   precision: str = "auto", batch_size: int = 256) -> torch.Tensor:
    """Logits for a uint8 (N, S, S, 3) tensor, in eval mode, no augmentation."""
    model.eval()
    out = []
    for idx in _batches(len(images_u8), batch_size, None):
        x = model_input(images_u8[idx], pre.mean, pre.std)
        with cpu.autocast(precision):
            out.append(model(x).float())
    return torch.cat(out) if out else torch.empty(0, 0)


def _write_history(rows: list[dict], run_dir: Path) -> None:
    tmp = run_dir / "history.csv.partial"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, run_dir / "history.csv")
    try:
        from .plots import plot_history
        plot_history(rows, run_dir / "curves.png")
    except ImportError:  # pragma: no cover
        pass


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.arch`` on ``cfg.data`` into ``cfg.out``; see :class:`TrainConfig`."""
    spec = get_spec(cfg.arch)
    if spec.kind is ModelKind.CLASSICAL:
        from .classical import train_classical
        return train_classical(cfg)
    t0 = time.perf_counter()
    cpu.set_threads(cfg.threads)
    run_dir = Path(cfg.out)
    ckpt_path = run_dir / "checkpoint.pt"
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.resume:
        raise WbcError(f"{run_dir}: output folder is not empty; pass --resume to continue that run or choose "
                       "another --out")
    if cfg.resume and not ckpt_path.is_file():
        raise WbcError(f"{ckpt_path}: nothing to resume (no checkpoint)")
    if not 0 <= cfg.mixstyle <= 1:
        raise WbcError(f"--mixstyle is a probability in [0, 1], got {cfg.mixstyle}")
    if cfg.mixstyle > 0:  # before anything is written: does MixStyle know where this network's stages are?
        try:  # on the meta device: the layout only, no weights allocated or initialised
            with torch.device("meta"):
                skeleton = spec.build(num_classes=2, pretrained=False)
            style_stages(skeleton)
        except ValueError as exc:
            raise WbcError(f"--mixstyle: {exc}") from None
    img_size = cfg.img_size or spec.img_size
    if spec.min_img_size == spec.img_size and img_size != spec.img_size:
        raise WbcError(f"{spec.name} has a fixed input of {spec.img_size}x{spec.img_size}; drop --img-size")
    if img_size < spec.min_img_size:
        raise WbcError(f"{spec.name} needs --img-size >= {spec.min_img_size}, got {img_size}")
    pre = PreprocessConfig(img_size=img_size, **cfg.preprocess)
    generator = seed_everything(cfg.seed)

    train_recs, val_recs = prepare_split(cfg)
    classes = ordered_classes(r.label for r in train_recs)
    unknown_val = sorted({r.label for r in val_recs} - set(classes))
    if unknown_val:
        raise WbcError(f"validation classes {unknown_val} are not in the training data")
    if len(classes) < 2:
        raise WbcError(f"need at least 2 classes to train, found {classes}")

    x_train, train_recs = decode_images(train_recs, pre, skip_bad=cfg.skip_bad, progress=cfg.progress,
                                        desc="decoding train")
    x_val, val_recs = decode_images(val_recs, pre, skip_bad=cfg.skip_bad, progress=cfg.progress,
                                    desc="decoding val")
    # the run folder appears only once the data has decoded: a start that fails on bad input leaves nothing to
    # clear away (a leftover split.csv would make the re-run ask for --resume, which has no checkpoint to resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_split_manifest([ImageRecord(r.path, r.label, r.group, "train") for r in train_recs]
                         + [ImageRecord(r.path, r.label, r.group, "val") for r in val_recs], run_dir / "split.csv")
    index = {c: i for i, c in enumerate(classes)}
    y_train = torch.tensor([index[r.label] for r in train_recs])
    y_val = torch.tensor([index[r.label] for r in val_recs])
    x_train, x_val = torch.from_numpy(x_train), torch.from_numpy(x_val)

    model = spec.build(num_classes=len(classes), pretrained=cfg.pretrained and spec.pretrained is not None)
    model = model.to(memory_format=torch.channels_last)
    style_hooks = mixstyle(model, cfg.mixstyle, generator) if cfg.mixstyle > 0 else []
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, -(-len(x_train) // cfg.batch_size))
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
                                                 pct_start=0.15)
             if cfg.schedule == "onecycle" else None)
    weight = None
    if cfg.class_weights:
        counts = torch.bincount(y_train, minlength=len(classes)).float().clamp(min=1)
        weight = counts.sum() / (len(classes) * counts)
    if cfg.augment_preset not in PRESETS:
        raise WbcError(f"unknown augmentation {cfg.augment_preset!r}; choose one of {', '.join(PRESETS)}")
    aug_cfg = PRESETS[cfg.augment_preset]
    history: list[dict] = []
    best = {"val_loss": float("inf"), "epoch": -1, "val_accuracy": 0.0}
    start_epoch = 0
    info = ModelInfo(arch=spec.name, classes=classes, preprocess=pre,
                     training={"config": _jsonable(asdict(cfg)), "n_train": len(train_recs), "n_val": len(val_recs),
                               "command": shlex.join(sys.argv), "pretrained": bool(cfg.pretrained and spec.pretrained),
                               "parameters": count_parameters(model)})
    if cfg.resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["classes"] != classes or state["arch"] != spec.name:
            raise WbcError(f"{ckpt_path}: checkpoint is for {state['arch']} {state['classes']}, not this data/arch")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        log.info("resuming at epoch %d", start_epoch + 1)

    bad_epochs = len(history) - (best["epoch"] + 1)  # epochs since the best one (resume)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        tot_loss, tot_correct, seen = 0.0, 0, 0
        bar = progress_bar(total=len(x_train), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="img",
                           enabled=cfg.progress)
        for idx in _batches(len(x_train), cfg.batch_size, generator):
            x = to_float(x_train[idx])
            if cfg.augment:
                x = augment(x, aug_cfg, generator)
            x = normalise(x, pre.mean, pre.std)
            y = y_train[idx]
            with cpu.autocast(cfg.precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            tot_loss += loss.detach().item() * len(idx)
            tot_correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_correct / seen:.3f}")
        bar.close()
        val_logits = predict_logits(model, x_val, pre, cfg.precision)
        val_loss = float(F.cross_entropy(val_logits, y_val)) if len(y_val) else float("nan")
        val_acc = float((val_logits.argmax(1) == y_val).float().mean()) if len(y_val) else float("nan")
        row = {"epoch": epoch + 1, "train_loss": round(tot_loss / seen, 5), "train_accuracy": round(tot_correct / seen, 5),
               "val_loss": round(val_loss, 5), "val_accuracy": round(val_acc, 5),
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, row)
        if cfg.progress:
            tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                       f"val loss {val_loss:.4f} acc {val_acc:.4f}")
        if cfg.monitor == "val_accuracy":
            improved = best["epoch"] < 0 or val_acc > best["val_accuracy"]
        else:
            improved = val_loss < best["val_loss"]
        if improved or not len(y_val):
            best = {"val_loss": val_loss, "epoch": epoch, "val_accuracy": val_acc}
            save_model(run_dir / "model.safetensors", model, info)
            bad_epochs = 0
        else:
            bad_epochs += 1
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "generator": generator.get_state(), "history": history, "best": best, "epoch": epoch,
                    "classes": classes, "arch": spec.name}, str(ckpt_path) + ".partial")
        os.replace(str(ckpt_path) + ".partial", ckpt_path)
        _write_history(history, run_dir)
        if bad_epochs >= cfg.patience:
            log.info("early stopping: no %s improvement for %d epochs", cfg.monitor, cfg.patience)
            break
        if cfg.target_accuracy is not None and val_acc >= cfg.target_accuracy:
            log.info("stopping: validation accuracy %.4f reached the target %.4f", val_acc, cfg.target_accuracy)
            break
        if cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes:
            log.info("stopping: the %.1f-minute budget is spent", cfg.max_minutes)
            break

    for h in style_hooks:
        h.remove()
    # calibrate the best model on the validation set
    from .modelio import load_model
    best_model, info = load_model(run_dir / "model.safetensors")
    temperature = 1.0
    if len(y_val) >= 20:
        val_logits = predict_logits(best_model.to(memory_format=torch.channels_last), x_val, pre, cfg.precision)
        temperature = fit_temperature(val_logits, y_val)
        if torch.isfinite(val_logits).all():  # the unknown rule: 95 % of validation cells pass (docs/decisions/0013)
            info.unknown_threshold = unknown_threshold(energy(val_logits.numpy()))
    info.temperature = temperature
    wall = time.perf_counter() - t0
    info.training.update({"best_epoch": best["epoch"] + 1, "best_val_loss": best["val_loss"],
                          "best_val_accuracy": best["val_accuracy"], "epochs_run": len(history),
                          "wall_seconds": round(wall, 1)})
    save_model(run_dir / "model.safetensors", best_model, info)
    result = TrainResult(run_dir, run_dir / "model.safetensors", best["epoch"] + 1, best["val_loss"],
                         best["val_accuracy"], len(history), wall, temperature, classes, len(train_recs), len(val_recs))
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    tmp = run_dir / "run.json.partial"
    tmp.write_text(json.dumps({"result": summary, "config": _jsonable(asdict(cfg))}, indent=2))
    os.replace(tmp, run_dir / "run.json")
    return result


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))
