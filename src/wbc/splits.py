"""Leakage-safe splits: stratified by class, with every group kept on one side.

A group is whatever must not be split: the source smear image of an augmented crop
(``dataset2_source_map.csv``), a patient, or a set of duplicate images found by
:mod:`wbc.audit`. Images without a group are their own group.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from .data import ImageRecord
from .errors import WbcError


def group_of(r: ImageRecord) -> str:
    return r.group if r.group is not None else str(r.path)


def split_off(records: list[ImageRecord], fraction: float, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split ``records`` into (rest, held_out) with ~``fraction`` held out, groups intact, classes stratified."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if len(records) < 2:
        raise WbcError(f"cannot split {len(records)} image(s); need at least 2")
    labels = np.array([r.label for r in records])
    groups = np.array([group_of(r) for r in records])
    if len(set(groups)) == len(records) and min(Counter(labels).values()) >= 2:
        # no groups to keep together: an exact stratified fraction
        idx = np.arange(len(records))
        n_classes, n_held = len(set(labels)), math.ceil(fraction * len(records))  # sklearn's rounding
        if min(n_held, len(records) - n_held) < n_classes:
            raise WbcError(f"{len(records)} images in {n_classes} classes are too few to hold out {fraction:.0%} "
                           f"with every class on both sides; add images or change the held-out fraction")
        train_idx, held_idx = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
        return [records[i] for i in sorted(train_idx)], [records[i] for i in sorted(held_idx)]
    n_splits = max(2, int(round(1 / fraction)))
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise WbcError(f"only {n_groups} groups: too few to hold out {fraction:.0%} of them")
    min_class = min(Counter(labels).values())
    if min_class < n_splits:
        # a class rarer than the number of folds cannot be stratified; fall back to group-only folds
        labels = np.zeros(len(records), dtype=int)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, held_idx = next(cv.split(np.zeros(len(records)), labels, groups))
    return [records[i] for i in train_idx], [records[i] for i in held_idx]


def three_way(records: list[ImageRecord], val: float, test: float, seed: int) -> list[ImageRecord]:
    """Assign ``split`` = train / val / test to every record (fractions of the whole)."""
    rest, test_recs = split_off(records, test, seed) if test > 0 else (records, [])
    train_recs, val_recs = split_off(rest, val / (1 - test), seed + 1) if val > 0 else (rest, [])
    return ([replace(r, split="train") for r in train_recs] + [replace(r, split="val") for r in val_recs]
            + [replace(r, split="test") for r in test_recs])


def check_disjoint(a: list[ImageRecord], b: list[ImageRecord]) -> int:
    """Number of groups found on both sides (0 for a leakage-safe split)."""
    return len({group_of(r) for r in a} & {group_of(r) for r in b})


def write_split_manifest(records: list[ImageRecord], path: Path) -> None:
    """Write ``path,label,group,split`` with paths relative to the CSV's folder when possible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    base = path.parent.resolve()
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "split"])
        for r in records:
            p = r.path.resolve()
            try:
                rel = os.path.relpath(p, base)
            except ValueError:
                rel = str(p)
            w.writerow([rel, r.label or "", r.group or "", r.split or ""])
    os.replace(tmp, path)
