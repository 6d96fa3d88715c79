"""Few-shot adaptation of a trained network to a new lab: ``wbc adapt``.

A lab labels a few cells of its own (<= 20 per class). Three cheap steps, all on the CPU in seconds
to minutes (docs/decisions/0008-few-shot-adaptation.md):

1. **BatchNorm statistics re-estimated** on the lab's images (AdaBN, Li et al. 2016): stain and
   camera shift the activations' means and variances; the learned filters stay.
2. **Classifier head re-fitted** on frozen penultimate features of augmented copies of the shots,
   with an L2 pull towards the original head (L2-SP, Li et al. 2018) so classes the lab did not
   label keep their rows and the model keeps what it knew. ``head="auto"`` re-fits only when the
   re-fitted heads classify shots they did not see better than the kept head (measured on
   validation: it keeps more of the original domain but adapts less; not the default).
3. **Temperature re-fitted** on shots held out from the head fit (2-fold cross-fitting), so the
   review threshold means the same on the new lab; the **unknown threshold** (wbc.ood) is re-fitted on
   the energies of the same held-out shots, since new BatchNorm statistics and head move every energy.

With unlabelled images only, ``--self-train`` goes beyond AdaBN: source-free self-training in the
manner of SHOT (Liang et al., ICML 2020) fine-tunes the feature extractor with the head frozen, on
information maximisation (confident yet diverse predictions) plus cross-entropy on pseudo-labels from
class centroids in feature space; BatchNorm statistics are re-estimated afterwards (docs/decisions/0017).
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import cpu
from .augment import PRESETS, augment, model_input, normalise, to_float
from .calibration import fit_temperature
from .data import ImageRecord, discover
from .errors import WbcError
from .imageset import decode_images
from .io import write_csv, write_json
from .modelio import load_model, resolve_model_path, save_model
from .models.ensemble import Ensemble
from .ood import energy, unknown_threshold

log = logging.getLogger(__name__)

#: label-free (AdaBN): the fewest unlabelled images whose BatchNorm statistics were, at that count and every larger
#: one measured, no worse on the lab's validation cells than not adapting (scripts/adabn_minimum.py; 0008)
MIN_UNLABELLED = 4
#: with labelled cells, BatchNorm statistics come from the shots' augmented views (plus any unlabelled images).
#: One cell per class of four (4 images) is the fewest measured: re-estimating on them was no worse on the lab's
#: validation cells than not adapting (scripts/adapt_curve.py --eval-split val, 'bn only'; docs/decisions/0008).
#: Fewer was never measured, and one image's statistics are that image's, so fewer is refused.
MIN_BN_IMAGES = 4


@dataclass
class AdaptConfig:
    """Everything ``wbc adapt`` needs; defaults as in ``wbc adapt --help``."""

    data: list[str]
    out: str
    model: str | None = None  # None: the bundled default
    unlabelled: list[str] = field(default_factory=list)  # the lab's unlabelled cell images (BatchNorm statistics)
    max_unlabelled: int = 2000  # at most this many of them, drawn at random (seeded)
    shots: int | None = 20  # labelled cells per class used (None: all given)
    split: str | None = None  # use only this split of a manifest (e.g. "train"), labelled and unlabelled
    groups: str | None = None
    bn: bool = True  # re-estimate BatchNorm statistics on the lab's images
    bn_mix: float = 1.0  # weight of the lab's statistics against the original ones
    head: str = "refit"  # classifier head: "refit", "keep", or "auto" (re-fit if that wins on held-out shots)
    views: int = 8  # augmented copies of every shot
    steps: int = 300  # head optimisation steps (full batch)
    lr: float = 0.01
    l2sp: float = 0.01  # pull towards the original head
    seed: int = 0
    self_train: int = 0  # epochs of label-free self-training on the unlabelled images (0: AdaBN only)
    self_train_lr: float = 1e-3  # SGD (momentum 0.9) learning rate of the feature extractor
    self_train_beta: float = 0.3  # weight of the pseudo-label cross-entropy
    classes: list[str] = field(default_factory=list)  # classes the lab's images can belong to (default: all)
    progress: bool = True
    extra: dict = field(default_factory=dict)


def pick_shots(records: list[ImageRecord], shots: int | None, seed: int) -> list[ImageRecord]:
    """Up to ``shots`` records per class, distinct groups (source cells) first, seeded.

    >>> recs = [ImageRecord(Path(f"{i}.png"), "a", group=str(i // 2)) for i in range(6)]
    >>> sorted(r.group for r in pick_shots(recs, 3, 0))
    ['0', '1', '2']
    """
    rng = random.Random(seed)
    by_class: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_class[r.label].append(r)
    out = []
    for label in sorted(by_class):
        recs = by_class[label][:]
        rng.shuffle(recs)
        if shots is None:
            out += recs
            continue
        seen, first, rest = set(), [], []
        for r in recs:
            key = r.group or str(r.path)
            (rest if key in seen else first).append(r)
            seen.add(key)
        out += (first + rest)[:shots]
    return out


def _members(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The networks whose heads adaptation re-fits: an ensemble's members, else the network itself."""
    return list(net.members) if isinstance(net, Ensemble) else [net]


def _mean_logits(parts: list[torch.nn.Module], x: torch.Tensor, precision: str = "auto") -> torch.Tensor:
    """Logits computed from the head inputs (as the head fit sees them), averaged over ``parts``."""
    return _features_logits(parts, x, precision)[1]


def _features_logits(parts: list[torch.nn.Module], x: torch.Tensor,
                     precision: str = "auto") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each part's head inputs and the logits they give, averaged over ``parts``."""
    feats, logits = [], []
    for m in parts:
        f, h = penultimate(m, x, precision), _head(m)
        feats.append(f)
        logits.append(f @ h.weight.detach().float().T + h.bias.detach().float())
    return feats, torch.stack(logits).mean(0)


def _head(net: torch.nn.Module) -> torch.nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise WbcError("this architecture has no linear classifier head to adapt")
    return linears[-1]


def _batches(x: torch.Tensor, size: int = 64):
    for i in range(0, len(x), size):
        yield x[i:i + size]


def _views(x_u8: torch.Tensor, views: int, generator: torch.Generator, mean, std) -> torch.Tensor:
    """``views`` augmented, normalised copies of every image: (views * N, 3, S, S)."""
    out = []
    for v in range(views):
        x = to_float(x_u8)
        if v:  # the first view is the image itself
            x = augment(x, PRESETS["standard"], generator)
        out.append(normalise(x, mean, std))
    return torch.cat(out)


@torch.no_grad()
def reestimate_batchnorm(net: torch.nn.Module, x: torch.Tensor, precision: str = "auto", mix: float = 1.0) -> int:
    """Re-estimate every BatchNorm's running statistics on ``x`` (normalised float images). Returns #layers.

    ``mix`` blends them with the original ones: 1 = the new lab's alone, 0.5 = halfway (keeps more of
    what the model knew about the original domain).
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    if not 0 < mix <= 1:
        raise WbcError(f"--bn-mix must be in (0, 1], got {mix}")
    old = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    net.train()
    for b in _batches(x, 64):
        with cpu.autocast(precision):
            net(b)
    for m, mom, (mean0, var0) in zip(bns, momenta, old):
        m.momentum = mom
        mean1, var1 = m.running_mean.clone(), m.running_var.clone()
        # moments of the mixture of the two domains
        m.running_mean.copy_(mix * mean1 + (1 - mix) * mean0)
        m.running_var.copy_(mix * (var1 + mean1 ** 2) + (1 - mix) * (var0 + mean0 ** 2) - m.running_mean ** 2)
    net.eval()
    return len(bns)


@torch.no_grad()
def penultimate(net: torch.nn.Module, x: torch.Tensor, precision: str = "auto") -> torch.Tensor:
    """Inputs of the classifier head for ``x`` (the network in eval mode)."""
    head, feats = _head(net), []
    hook = head.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].detach().float()))
    try:
        for b in _batches(x, 64):
            with cpu.autocast(precision):
                net(b)
    finally:
        hook.remove()
    return torch.cat(feats)


def fit_head(feats: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, *, steps: int, lr: float,
             l2sp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on ``feats`` plus ``l2sp * ||W - W0||^2``; full-batch Adam from the original head.

    Only the rows of the classes present in ``y`` are fitted, with the softmax over those classes
    alone: a class the lab did not label keeps its original row instead of being pushed down.
    """
    present = torch.unique(y)
    remap = torch.full((w0.shape[0],), -1, dtype=torch.long)
    remap[present] = torch.arange(len(present))
    w_p, b_p = w0[present].clone().requires_grad_(True), b0[present].clone().requires_grad_(True)
    opt = torch.optim.Adam([w_p, b_p], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w_p.T + b_p, remap[y]) + l2sp * ((w_p - w0[present]) ** 2).sum()
        loss.backward()
        opt.step()
    w, b = w0.clone(), b0.clone()
    w[present], b[present] = w_p.detach(), b_p.detach()
    return w, b


HEAD_MODES = ("auto", "refit", "keep")


def head_mode(head: str | bool) -> str:
    """``cfg.head`` as one of :data:`HEAD_MODES` (``True``/``False`` mean "refit"/"keep")."""
    if isinstance(head, bool):
        return "refit" if head else "keep"
    if head not in HEAD_MODES:
        raise WbcError(f"--head takes one of {', '.join(HEAD_MODES)}, got {head!r}")
    return head


def restricted_accuracy(logits: torch.Tensor, y: torch.Tensor, classes: list[int]) -> float:
    """Top-1 accuracy of ``logits`` among ``classes`` only (the classes the lab labelled)."""
    idx = torch.tensor(classes)
    return float((idx[logits[:, idx].argmax(1)] == y).float().mean())


def adapt(cfg: AdaptConfig) -> dict:
    """Adapt ``cfg.model`` to the labelled cells of ``cfg.data``; write ``out/model.safetensors`` and ``adapt.json``.

    Raises:
        WbcError: no labelled images, classes the model does not know, or a classical model.
    """
    t0 = time.perf_counter()
    path = resolve_model_path(cfg.model)
    if path.suffix != ".safetensors":
        raise WbcError(f"{path}: wbc adapt works on neural .safetensors models (retrain classical ones)")
    net, info = load_model(path)
    if not cfg.data and not cfg.unlabelled:
        raise WbcError("nothing to adapt to: give the lab's labelled cells (--data) and/or unlabelled ones "
                       "(--unlabelled)")
    mode = head_mode(cfg.head)
    if cfg.self_train < 0:
        raise WbcError(f"--self-train takes a number of epochs >= 0, got {cfg.self_train}")
    if cfg.self_train and (cfg.data or not cfg.unlabelled):
        raise WbcError("--self-train adapts without labels: give --unlabelled images and no --data")
    pre = info.preprocess
    g = torch.Generator().manual_seed(cfg.seed)
    net = net.to(memory_format=torch.channels_last)
    x_unl = _unlabelled_images(cfg, pre)
    if not cfg.data:
        return _adapt_unlabelled(cfg, path, net, info, x_unl, t0)
    records: list[ImageRecord] = []
    for d in cfg.data:
        ds = discover(d, cfg.groups)
        records += ds.split(cfg.split).records if cfg.split else ds.records
    records = [r for r in records if r.label is not None]
    if not records:
        raise WbcError(f"no labelled images in {', '.join(cfg.data)}")
    unknown = sorted({r.label for r in records} - set(info.classes))
    if unknown:
        raise WbcError(f"classes {unknown} are not classes of the model ({', '.join(info.classes)})")
    shots = pick_shots(records, cfg.shots, cfg.seed)
    n_distinct = len(shots) + (0 if x_unl is None else len(x_unl))
    labelled = sorted({r.label for r in shots})
    few_images, one_class = cfg.bn and n_distinct < MIN_BN_IMAGES, mode != "keep" and len(labelled) < 2
    if few_images and one_class:  # neither step can run: say both at once, not one after the other
        raise WbcError(f"{n_distinct} distinct cell image(s) of one class ({labelled[0]}): too few to adapt "
                       f"(BatchNorm statistics need at least {MIN_BN_IMAGES} images, a head re-fit cells of at least "
                       "2 classes); add cells")
    if few_images:
        raise WbcError(f"{n_distinct} distinct cell image(s): re-estimating BatchNorm statistics needs at least "
                       f"{MIN_BN_IMAGES} (labelled and --unlabelled together); add cells, or pass --no-batchnorm to "
                       "adapt only the classifier head")
    if one_class:
        raise WbcError(f"re-fitting the classifier head needs labelled cells of at least 2 classes, got only "
                       f"{labelled[0]}; add cells of other classes, or pass --head keep")
    x_u8, shots = decode_images(shots, info.preprocess, progress=cfg.progress, desc="decoding shots")
    x_u8 = torch.from_numpy(x_u8)
    y = torch.tensor([info.classes.index(r.label) for r in shots])
    x = _views(x_u8, cfg.views, g, pre.mean, pre.std)
    yv = y.repeat(cfg.views)
    n_bn = reestimate_batchnorm(net, x if x_unl is None else torch.cat([x, x_unl]), mix=cfg.bn_mix) if cfg.bn else 0
    # an ensemble re-fits each member's head on that member's features; its logits are the members' mean
    parts = _members(net)
    heads = [_head(m) for m in parts]
    start = [(h.weight.detach().float().clone(), h.bias.detach().float().clone()) for h in heads]
    feats, logits = _features_logits(parts, x)
    kept_logits = logits[: len(y)]  # the unaugmented shots under the original heads
    t_new = info.temperature
    choice = {"mode": mode}
    refit = mode != "keep"
    if refit:
        # 2-fold cross-fitting: every unaugmented shot is scored by heads that did not see it; the
        # temperature is fitted on those logits, and "auto" compares them with the original head's
        fold = (torch.arange(len(y)) % 2).repeat(cfg.views)
        order, logits_out = [], []
        for k in (0, 1):
            tr = fold != k
            te = torch.nonzero(fold[: len(y)] == k).squeeze(1)
            member_logits = []
            for f, (w0, b0) in zip(feats, start):
                w, b = fit_head(f[tr], yv[tr], w0, b0, steps=cfg.steps, lr=cfg.lr, l2sp=cfg.l2sp)
                member_logits.append(f[te] @ w.T + b)
            logits_out.append(torch.stack(member_logits).mean(0))
            order.append(te)
        held_out = torch.empty_like(kept_logits)
        held_out[torch.cat(order)] = torch.cat(logits_out)
        given = sorted(set(y.tolist()))
        choice["crossfit_accuracy_refit"] = restricted_accuracy(held_out, y, given)
        choice["accuracy_kept"] = restricted_accuracy(kept_logits, y, given)
        if mode == "auto":
            refit = choice["crossfit_accuracy_refit"] > choice["accuracy_kept"]
    if refit:
        if len(y) >= 4:
            t_new = fit_temperature(held_out, y)
        for head, f, (w0, b0) in zip(heads, feats, start):
            w, b = fit_head(f, yv, w0, b0, steps=cfg.steps, lr=cfg.lr, l2sp=cfg.l2sp)
            with torch.no_grad():
                head.weight.copy_(w)
                head.bias.copy_(b)
    else:
        held_out = kept_logits
        if len(y) >= 4:
            t_new = fit_temperature(held_out, y)
    # 95 % of the lab's own cells pass as known; with fewer than 4 shots there is nothing to fit it on
    t_unknown = unknown_threshold(energy(held_out.numpy())) if len(y) >= 4 and torch.isfinite(held_out).all() \
        else None
    summary = {"source_model": str(path), "data": [str(d) for d in cfg.data],
               "unlabelled_images": 0 if x_unl is None else len(x_unl), "classes_given": sorted(set(
        r.label for r in shots)), "shots": len(shots), "per_class": {c: int((y == i).sum()) for i, c in
                                                                   enumerate(info.classes) if (y == i).any()},
        "batchnorm_layers_reestimated": n_bn, "head_refit": refit, "head_choice": choice, "temperature_before": info.temperature,
        "temperature": t_new, "unknown_threshold_before": info.unknown_threshold, "unknown_threshold": t_unknown,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "seconds": round(time.perf_counter() - t0, 1)}
    info.temperature, info.unknown_threshold = t_new, t_unknown
    _save(cfg, net, info, summary)
    write_csv(Path(cfg.out) / "shots.csv", [{"path": str(r.path), "label": r.label, "group": r.group or ""}
                                            for r in shots], ["path", "label", "group"])
    return summary


def _save(cfg: AdaptConfig, net: torch.nn.Module, info, summary: dict) -> None:
    info.training = {**info.training, "adaptation": summary}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.safetensors", net.to(memory_format=torch.contiguous_format), info)
    write_json(out / "adapt.json", summary)


def _unlabelled_images(cfg: AdaptConfig, pre) -> torch.Tensor | None:
    """The lab's unlabelled images (labels, if any, ignored), preprocessed and normalised; None if none given."""
    if not cfg.unlabelled:
        return None
    from .data import image_files
    paths: list[Path] = []
    for d in cfg.unlabelled:
        p = Path(d)
        if p.suffix == ".csv":
            ds = discover(d, cfg.groups)
            paths += [r.path for r in (ds.split(cfg.split) if cfg.split else ds).records]
        else:
            paths += image_files([p])
    if not paths:
        raise WbcError(f"no images in {', '.join(cfg.unlabelled)}")
    if len(paths) > cfg.max_unlabelled:
        paths = random.Random(cfg.seed).sample(paths, cfg.max_unlabelled)
    x_u8, _ = decode_images([ImageRecord(p, None) for p in paths], pre, skip_bad=True, progress=cfg.progress,
                            desc="decoding unlabelled")
    if len(x_u8) < MIN_UNLABELLED:
        raise WbcError(f"{len(x_u8)} readable unlabelled images in {', '.join(cfg.unlabelled)}: need at least "
                       f"{MIN_UNLABELLED} to estimate BatchNorm statistics")
    return model_input(torch.from_numpy(x_u8), pre.mean, pre.std)


def _adapt_unlabelled(cfg: AdaptConfig, path: Path, net: torch.nn.Module, info, x: torch.Tensor, t0: float) -> dict:
    """Label-free adaptation: BatchNorm statistics of the lab's own images (AdaBN); the head and the
    temperature stay; the unknown threshold is re-fitted so that 95 % of the lab's images pass as known."""
    n_bn = reestimate_batchnorm(net, x, mix=cfg.bn_mix) if cfg.bn else 0
    st = None
    if cfg.self_train:
        st = self_train(net, x, _class_indices(cfg.classes, info.classes), info.preprocess, epochs=cfg.self_train,
                        lr=cfg.self_train_lr, beta=cfg.self_train_beta, seed=cfg.seed, progress=cfg.progress)
        if cfg.bn:  # the statistics of the adapted features
            reestimate_batchnorm(net, x, mix=cfg.bn_mix)
    logits = _mean_logits(_members(net), x)
    t_unknown = unknown_threshold(energy(logits.numpy())) if torch.isfinite(logits).all() else None
    summary = {"source_model": str(path), "data": [], "unlabelled": [str(d) for d in cfg.unlabelled],
               "unlabelled_images": len(x), "classes_given": [], "shots": 0, "per_class": {},
               "batchnorm_layers_reestimated": n_bn, "head_refit": False, "temperature_before": info.temperature,
               "temperature": info.temperature, "unknown_threshold_before": info.unknown_threshold,
               "unknown_threshold": t_unknown, "self_training": st,
               "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
               "seconds": round(time.perf_counter() - t0, 1)}
    info.unknown_threshold = t_unknown
    _save(cfg, net, info, summary)
    return summary


def _class_indices(names: list[str], classes: list[str]) -> list[int]:
    """Indices of ``names`` (canonicalised) among the model's ``classes``; all of them if ``names`` is empty."""
    if not names:
        return list(range(len(classes)))
    from .classes import canonical_label
    idx = []
    for n in names:
        c = canonical_label(n)
        if c not in classes:
            raise WbcError(f"--classes: {n!r} is not a class of the model ({', '.join(classes)})")
        idx.append(classes.index(c))
    if len(set(idx)) < 2:
        raise WbcError("--classes: give at least two different classes")
    return sorted(set(idx))


def centroid_pseudo_labels(feats: torch.Tensor, probs: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """SHOT's pseudo-labels: class centroids of the L2-normalised features weighted by the predicted
    probabilities, then refined with hard assignments; every image gets its nearest centroid (cosine).

    >>> f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> p = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    >>> centroid_pseudo_labels(f, p).tolist()
    [0, 0, 1, 1]
    """
    fn = F.normalize(feats.float(), dim=1)
    weights = probs.float()
    labels = weights.argmax(1)
    for _ in range(rounds):
        cent = F.normalize((weights.T @ fn) / weights.sum(0).clamp(min=1e-8)[:, None], dim=1)
        labels = (fn @ cent.T).argmax(1)
        weights = F.one_hot(labels, probs.shape[1]).float()
    return labels


def self_train(net: torch.nn.Module, x: torch.Tensor, keep: list[int], pre, *, epochs: int, lr: float = 1e-3,
               beta: float = 0.3, batch_size: int = 64, seed: int = 0, precision: str = "auto",
               progress: bool = True) -> dict:
    """Label-free adaptation of ``net`` (in place) to the normalised images ``x``; returns a summary.

    Every epoch: pseudo-labels from feature centroids (:func:`centroid_pseudo_labels`) on the
    un-augmented images, then one pass over augmented copies minimising the mean prediction entropy
    minus the entropy of the mean prediction (SHOT's information maximisation: each image confident,
    the classes used evenly) plus ``beta`` times the cross-entropy on the pseudo-labels. Only the
    feature extractor learns: the heads stay, so the classes keep their meaning; BatchNorm layers run
    on their (re-estimated) statistics.
    """
    from .progress import progress as progress_bar
    g = torch.Generator().manual_seed(seed)
    parts = _members(net)
    heads = {id(p) for m in parts for p in _head(m).parameters()}
    params = [p for p in net.parameters() if id(p) not in heads]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-3, nesterov=True)
    keep_t = torch.tensor(keep)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    history = []
    for epoch in range(epochs):
        net.eval()
        feats, logits = _features_logits(parts, x, precision)  # an ensemble clusters its members' features joined
        probs = F.softmax(logits[:, keep_t], 1)
        pseudo = centroid_pseudo_labels(torch.cat(feats, 1), probs)
        agree = float((pseudo == probs.argmax(1)).float().mean())
        tot, seen = 0.0, 0
        bar = progress_bar(total=len(x), desc=f"self-training {epoch + 1}/{epochs}", unit="img", enabled=progress)
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if len(idx) < 2:
                continue
            xb = ((x[idx] * std + mean).clamp(0, 1)).contiguous(memory_format=torch.channels_last)
            xb = normalise(augment(xb, PRESETS["standard"], g), pre.mean, pre.std)
            with cpu.autocast(precision):
                out = net(xb)
            z = out.float()[:, keep_t]
            p = F.softmax(z, 1)
            ent = -(p * torch.log(p + 1e-6)).sum(1).mean()
            pm = p.mean(0)
            div = -(pm * torch.log(pm + 1e-6)).sum()
            loss = ent - div + beta * F.cross_entropy(z, pseudo[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.update(len(idx))
        bar.close()
        history.append({"epoch": epoch + 1, "loss": round(tot / max(seen, 1), 4),
                        "pseudo_label_share": {int(c): round(float((pseudo == i).float().mean()), 4)
                                               for i, c in enumerate(keep)},
                        "pseudo_agrees_with_prediction": round(agree, 4)})
        log.info("self-training epoch %d: %s", epoch + 1, history[-1])
    net.eval()
    return {"epochs": epochs, "lr": lr, "beta": beta, "classes": keep, "history": history}
