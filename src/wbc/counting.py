"""``wbc count``: find, classify and count every white blood cell in the smear fields of a sample.

For each sample (a folder of field photos, or ``--sample-id`` for everything given):

1. every field is read (a broken file is reported by name; the rest still counts) and checked
   (blank, non-smear, exposure, focus: :func:`wbc.detection.field_quality`);
2. the red-cell diameter is estimated per field and pooled over the sample (the magnification);
3. every WBC is detected (:func:`wbc.detection.detect_wbcs`, tiled for large images), cut out the
   way the classifier was trained (:func:`classifier_window`) and classified; a cell whose
   calibrated confidence is below the review threshold is marked for review, and so is a cell the
   model calls unknown (unlike any cell it knows, :mod:`wbc.ood`) and every cell of a field with a
   quality warning. Cells marked for review are counted all the same, and listed;
4. the differential (:mod:`wbc.differential`) is computed against the reference ranges and written
   with ``cells.csv``, ``annotated/<stem>.png`` and ``report.html``.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .classes import display_name
from .data import IMAGE_EXTENSIONS, image_files, load_image
from .detection import (REFERENCE_FIELD, REFERENCE_RBC_PX, SKIP, Cell, DetectionConfig, Quality, detect_wbcs,
                        estimate_rbc_diameter, field_quality, pooled_rbc_diameter)
from .differential import (LEUKOCYTES, MIN_CELLS, TYPE_COLOURS, Differential, compute_differential,
                           plot_differential)
from .errors import BadImageError, WbcError
from .io import write_bytes, write_csv, write_json
from .ood import OodScore, is_unknown, model_threshold, score_arrays, score_images, score_kind
from .preprocessing import PreprocessConfig, prepare
from .reference_ranges import load_ranges, select_band
from .report import Section, html_table, note_section, table_section, write_html_report

log = logging.getLogger(__name__)

#: Review threshold when the model records none. With calibrated confidences, cells below 0.7 are
#: wrong about 3 times in 10 or more; on the 69 held-out BCCD fields 55/56 cells above it were right
#: and 7/13 below it (docs/decisions/0006).
DEFAULT_REVIEW_THRESHOLD = 0.7
#: Review reason of a cell the model calls unknown (docs/decisions/0013).
UNKNOWN_REASON = "unknown: unlike any cell the model knows"
#: Quality flags that send every cell of the field to review (the cells are still counted).
REVIEW_FLAGS = frozenset({Quality.OUT_OF_FOCUS, Quality.OVER_EXPOSED, Quality.UNDER_EXPOSED, Quality.SCALE_UNKNOWN})
#: Fields whose pixels are kept between the two passes while the sample stays under this size.
_KEEP_PIXELS = 150_000_000


@dataclass
class CountConfig:
    """Everything ``wbc count`` needs; defaults as in ``wbc count --help``."""

    inputs: list[str]
    out: str
    sample_id: str | None = None
    wbc_count: float | None = None  # x10^9/L
    model: str | None = None
    ranges: str | None = None
    age: float | None = None
    sex: str | None = None
    review_threshold: float | None = None  # default: the model's, else DEFAULT_REVIEW_THRESHOLD
    rbc_px: float | None = None  # red-cell diameter in pixels (default: estimated per sample)
    min_cells: int = MIN_CELLS
    precision: str = "auto"
    backend: str = "auto"
    annotated_in_report: int = 24  # fields shown in report.html (all are written to annotated/)
    gallery_per_type: int = 60  # cell thumbnails per type in report.html
    progress: bool = False
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    on_progress: Callable[[str, int, int], None] | None = None  # (stage, fields done, fields) before each field


@dataclass
class Sample:
    sample_id: str
    paths: list[Path]


@dataclass
class CellRecord:
    image: str
    cell_id: int
    box: tuple[int, int, int, int]
    label: str
    confidence: float
    review: bool
    review_reason: str
    at_edge: bool
    probabilities: dict[str, float]
    thumbnail: bytes = b""  # JPEG for the report gallery
    unknown: bool = False  # unlike any cell the model knows (wbc.ood): marked for review too


@dataclass
class ImageSummary:
    image: str
    width: int = 0
    height: int = 0
    n_cells: int = 0
    quality: list[str] = field(default_factory=list)
    error: str | None = None
    annotated: str | None = None
    seconds: float = 0.0
    preview: bytes = b""  # small JPEG of the annotated field for report.html


@dataclass
class SampleResult:
    sample_id: str
    out_dir: Path
    differential: Differential
    cells: list[CellRecord]
    images: list[ImageSummary]
    rbc_px: float | None
    seconds: float


# ----------------------------------------------------------------------------------------------
# samples


def _has_images(folder: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
               for f in folder.rglob("*"))


def _direct_images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                  and not f.name.startswith("."))


def find_samples(inputs: list[str | Path], sample_id: str | None = None) -> list[Sample]:
    """Group the inputs into samples.

    * ``sample_id`` given: everything is one sample of that name.
    * A folder: its own images are one sample named after it; each sub-folder holding images
      (at any depth) is one more sample named after the sub-folder.
    * Files given directly: one sample named after their (first) parent folder.

    Raises:
        WbcError: no image and no file at all in the inputs.
    """
    if sample_id is not None:
        paths = image_files(list(inputs))
        return [Sample(sample_id, paths)] if paths else []
    samples: list[Sample] = []
    loose: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            direct = _direct_images(p)
            if direct:
                samples.append(Sample(p.resolve().name or "sample", direct))
            for sub in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
                if _has_images(sub):
                    samples.append(Sample(sub.name, image_files([sub])))
        else:
            loose.append(p)  # missing or unreadable files are reported when read
    if loose:
        samples.insert(0, Sample(loose[0].resolve().parent.name or "sample", loose))
    seen: Counter[str] = Counter()
    for s in samples:  # two folders with the same name stay two samples
        seen[s.sample_id] += 1
        if seen[s.sample_id] > 1:
            s.sample_id = f"{s.sample_id}-{seen[s.sample_id]}"
    return samples


# ----------------------------------------------------------------------------------------------
# classification


def classifier_window(img: Image.Image, box: tuple[int, int, int, int], rbc_px: float,
                      preprocess: PreprocessConfig) -> tuple[Image.Image, bool]:
    """The part of a field the classifier should see for the cell in ``box``.

    The bundled model was trained on Kaggle crops, which are whole BCCD fields (640x480, red cells
    ~103 px) at half size, cropped to a square of ``crop`` x the short side around the WBC. Here
    the same square is cut around the detected cell, scaled by the field's magnification
    (``rbc_px / 103``) and shifted to stay inside the image. A model without ``crop`` gets a
    reference-field-sized window around the cell.

    Returns:
        ``(window, cropped)``: ``cropped`` is True when the window is already the classifier's
        square (its own centring step must be skipped).
    """
    W, H = img.size
    k = rbc_px / REFERENCE_RBC_PX
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if preprocess.crop:
        side = min(int(round(preprocess.crop * REFERENCE_FIELD[1] * k)), W, H)
        ww, wh = side, side
    else:
        ww, wh = min(int(round(REFERENCE_FIELD[0] * k)), W), min(int(round(REFERENCE_FIELD[1] * k)), H)
    x0 = int(min(max(0, round(cx - ww / 2)), W - ww))
    y0 = int(min(max(0, round(cy - wh / 2)), H - wh))
    return img.crop((x0, y0, x0 + ww, y0 + wh)), bool(preprocess.crop)


def score_cells(predictor, img: Image.Image, cells: list[Cell], rbc_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated class probabilities ``(len(cells), C)`` and OOD scores ``(len(cells),)`` (:mod:`wbc.ood`)
    for the detected cells of one field."""
    if not cells:
        return np.zeros((0, len(predictor.classes))), np.zeros(0)
    pre: PreprocessConfig = predictor.info.preprocess
    windows = [classifier_window(img, c.box, rbc_px, pre) for c in cells]
    if score_kind(predictor) is OodScore.ENERGY:  # neural: apply the model's preprocessing minus the centring
        arrays = np.stack([prepare(w, replace(pre, crop=None) if cropped else pre) for w, cropped in windows])
        return score_arrays(predictor, arrays)
    # other predictors centre on the cell themselves: give them the reference-field window
    ctx = replace(pre, crop=None)
    return score_images(predictor, [classifier_window(img, c.box, rbc_px, ctx)[0] for c in cells])


def classify_cells(predictor, img: Image.Image, cells: list[Cell], rbc_px: float) -> np.ndarray:
    """Calibrated class probabilities ``(len(cells), C)`` for the detected cells of one field."""
    return score_cells(predictor, img, cells, rbc_px)[0]


def review_threshold(predictor, override: float | None) -> float:
    if override is not None:
        if not 0 <= override <= 1:
            raise WbcError(f"--review-threshold must be in [0, 1], got {override}")
        return override
    t = getattr(predictor.info, "review_threshold", None)
    return float(t) if t is not None else DEFAULT_REVIEW_THRESHOLD


# ----------------------------------------------------------------------------------------------
# drawing


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else (255, 255, 255)


def _label(img: np.ndarray, text: str, x: int, y: int, colour, scale: float, thick: int) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    H, W = img.shape[:2]
    x = int(min(max(0, x), max(0, W - tw - 4)))
    y = int(min(max(th + base + 2, y), H - 1))
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 4, y), colour, -1)
    cv2.putText(img, text, (x + 2, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, _text_colour(colour), thick,
                cv2.LINE_AA)


def annotate_field(rgb: np.ndarray, cells: list[Cell], records: list[CellRecord], classes: list[str],
                   max_side: int = 4096) -> np.ndarray:
    """The field with every WBC outlined in its type's colour, labelled ``#id type confidence``, and a legend.

    Cells marked for review are labelled with a trailing ``?``. Fields larger than ``max_side``
    are drawn downscaled.
    """
    H, W = rgb.shape[:2]
    f = min(1.0, max_side / max(H, W))
    img = np.ascontiguousarray(cv2.resize(rgb, (round(W * f), round(H * f)), interpolation=cv2.INTER_AREA)
                               if f < 1 else rgb.copy())
    h, w = img.shape[:2]
    unit = max(1.0, min(h, w) / 480)
    thick, scale = max(2, int(round(2 * unit))), 0.5 * unit
    for cell, rec in zip(cells, records):
        colour = TYPE_COLOURS.get(rec.label, (0, 0, 0))
        mask = cell.mask.astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        x0, y0 = cell.box[:2]
        for c in contours:
            c = ((c + np.array([x0, y0])) * f).astype(np.int32)
            cv2.drawContours(img, [c], -1, colour, thick, cv2.LINE_AA)
        text = f"#{rec.cell_id} {display_name(rec.label)} {rec.confidence:.2f}" + ("?" if rec.review else "")
        _label(img, text, int(cell.box[0] * f), int(cell.box[1] * f) - 2, colour, scale, max(1, thick // 2))
    # legend strip below the field
    types = [c for c in classes if c in TYPE_COLOURS]
    row_h = int(22 * unit)
    per_row = max(1, int(w // (170 * unit)))
    rows = math.ceil(len(types) / per_row) + 1
    legend = np.full((rows * row_h + int(6 * unit), w, 3), 255, np.uint8)
    for i, t in enumerate(types):
        x, y = int((i % per_row) * 170 * unit + 6 * unit), int((i // per_row) * row_h + 4 * unit)
        cv2.rectangle(legend, (x, y), (x + int(16 * unit), y + int(14 * unit)), TYPE_COLOURS[t], -1)
        cv2.putText(legend, display_name(t), (x + int(22 * unit), y + int(13 * unit)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45 * unit, (0, 0, 0), max(1, int(unit)), cv2.LINE_AA)
    n_review = sum(r.review for r in records)
    summary = f"{len(records)} WBC" + (f", {n_review} for review (?)" if n_review else "")
    cv2.putText(legend, summary, (int(6 * unit), int((rows - 1) * row_h + 17 * unit)), cv2.FONT_HERSHEY_SIMPLEX,
                0.45 * unit, (0, 0, 0), max(1, int(unit)), cv2.LINE_AA)
    return np.vstack([img, legend])


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                                                      cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    if not ok:  # pragma: no cover
        raise OSError("could not encode PNG")
    return buf.tobytes()


def _jpeg(rgb: np.ndarray, max_side: int, quality: int = 85) -> bytes:
    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else b""


def _thumbnail(rgb: np.ndarray, box: tuple[int, int, int, int], side: int = 96) -> bytes:
    x0, y0, x1, y1 = box
    pad = int(0.1 * max(x1 - x0, y1 - y0))
    H, W = rgb.shape[:2]
    crop = rgb[max(0, y0 - pad):min(H, y1 + pad), max(0, x0 - pad):min(W, x1 + pad)]
    return _jpeg(crop, side, 80)


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for p in paths:
        seen[p.stem] += 1
        out.append(p.stem if seen[p.stem] == 1 else f"{p.stem}-{seen[p.stem]}")
    return out


# ----------------------------------------------------------------------------------------------
# counting


def count_sample(sample: Sample, out_dir: Path, predictor, cfg: CountConfig) -> SampleResult:
    """Detect, classify and count the cells of one sample; write its outputs into ``out_dir``."""
    from .progress import progress as progress_bar

    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    det_cfg = cfg.detection
    classes = list(predictor.classes)
    threshold = review_threshold(predictor, cfg.review_threshold)
    unknown_thr = model_threshold(predictor)
    images = [ImageSummary(str(p)) for p in sample.paths]
    stems = _unique_stems(sample.paths)

    # pass 1: read, check and measure every field; keep the pixels while the sample is small
    kept: dict[int, np.ndarray] = {}
    flags: dict[int, list[str]] = {}
    estimates: list[float | None] = []
    budget = _KEEP_PIXELS
    for i, p in enumerate(progress_bar(sample.paths, desc=f"{sample.sample_id}: checking", unit="field",
                                       enabled=cfg.progress)):
        if cfg.on_progress:  # e.g. wbc serve's progress and cancellation
            cfg.on_progress("checking", i, len(sample.paths))
        try:
            rgb = np.asarray(load_image(p))
        except BadImageError as exc:
            images[i].error = exc.reason
            log.warning("%s", exc)
            continue
        images[i].height, images[i].width = rgb.shape[:2]
        flags[i], _ = field_quality(rgb, det_cfg)
        if not set(flags[i]) & SKIP and cfg.rbc_px is None and det_cfg.rbc_px is None:
            estimates.append(estimate_rbc_diameter(rgb))
        if rgb.shape[0] * rgb.shape[1] <= budget:
            kept[i] = rgb
            budget -= rgb.shape[0] * rgb.shape[1]
    rbc = cfg.rbc_px or det_cfg.rbc_px or pooled_rbc_diameter(estimates, det_cfg.snap)
    scale_known = rbc is not None
    rbc = rbc or REFERENCE_RBC_PX

    # pass 2: detect, classify, draw
    records: list[CellRecord] = []
    for i, p in enumerate(progress_bar(sample.paths, desc=f"{sample.sample_id}: counting", unit="field",
                                       enabled=cfg.progress)):
        if cfg.on_progress:
            cfg.on_progress("counting", i, len(sample.paths))
        summary = images[i]
        if summary.error is not None:
            continue
        t0 = time.perf_counter()
        rgb = kept.pop(i, None)
        if rgb is None:
            try:
                rgb = np.asarray(load_image(p))
            except BadImageError as exc:  # changed on disk between the passes
                summary.error = exc.reason
                continue
        field_flags = list(flags.get(i, []))
        if not scale_known and not set(field_flags) & SKIP:
            field_flags.append(Quality.SCALE_UNKNOWN.value)
        if set(field_flags) & SKIP:
            cells: list[Cell] = []
        else:
            cells = detect_wbcs(rgb, det_cfg, rbc_px=rbc, check_quality=False).cells
        summary.quality = field_flags
        for flag in field_flags:
            log.warning("%s: %s", p, flag.replace("_", " "))
        img = Image.fromarray(rgb)
        probs, scores = score_cells(predictor, img, cells, rbc)
        field_review = [f for f in field_flags if f in REVIEW_FLAGS]
        field_records = []
        for cell, pr, unknown in zip(cells, probs, is_unknown(scores, unknown_thr)):
            k = int(np.argmax(pr))
            conf = float(pr[k])
            reasons = (([f"confidence < {threshold:g}"] if conf < threshold else []) + [UNKNOWN_REASON] * bool(unknown)
                       + field_review)
            rec = CellRecord(str(p), len(records) + len(field_records) + 1, cell.box, classes[k], conf, bool(reasons),
                             "; ".join(reasons), cell.at_edge, {c: float(v) for c, v in zip(classes, pr)},
                             _thumbnail(rgb, cell.box), bool(unknown))
            field_records.append(rec)
        records += field_records
        summary.n_cells = len(cells)
        annotated = out_dir / "annotated" / f"{stems[i]}.png"
        drawn = annotate_field(rgb, cells, field_records, classes)
        write_bytes(annotated, _png(drawn))
        if sum(bool(s.preview) for s in images) < cfg.annotated_in_report:
            summary.preview = _jpeg(drawn, 900)
        summary.annotated = str(annotated.relative_to(out_dir))
        summary.seconds = time.perf_counter() - t0

    table = load_ranges(cfg.ranges)
    band = select_band(table, cfg.age, cfg.sex)
    n_read = sum(s.error is None for s in images)
    diff = compute_differential([r.label for r in records], sample_id=sample.sample_id,
                                review=[r.review for r in records], wbc_count=cfg.wbc_count, band=band, table=table,
                                min_cells=cfg.min_cells, n_images=n_read)
    unreadable = [s for s in images if s.error is not None]
    if unreadable:
        diff.warnings.append(f"{len(unreadable)} unreadable file(s): "
                             + "; ".join(f"{Path(s.image).name}: {s.error}" for s in unreadable[:10])
                             + (" ..." if len(unreadable) > 10 else ""))
    flagged = Counter(f for s in images for f in s.quality)
    for f, n in sorted(flagged.items()):
        diff.warnings.append(f"{n} field(s) flagged {f.replace('_', ' ')}")
    if not scale_known:
        diff.warnings.append("no red cells to measure the magnification: the BCCD scale was assumed")
    if unknown := [r for r in records if r.unknown]:
        diff.warnings.append(unknown_warning(unknown))
    result = SampleResult(sample.sample_id, out_dir, diff, records, images, rbc if scale_known else None,
                          time.perf_counter() - t_start)
    write_outputs(result, classes, cfg, threshold, unknown_thr)
    return result


def unknown_warning(cells: list[CellRecord], shown: int = 20) -> str:
    """The differential's warning listing the cells the model called unknown (they are counted, for review)."""
    ids = ", ".join(f"#{r.cell_id}" for r in cells[:shown]) + (" ..." if len(cells) > shown else "")
    return (f"{len(cells)} detection(s) unlike any cell the model knows (unknown: perhaps not a white blood cell, "
            f"or a stain or scale it never saw) are counted under their best guess and marked for review: {ids}")


def _cells_rows(records: list[CellRecord], classes: list[str]) -> tuple[list[dict], list[str]]:
    fields = ["image", "cell_id", "x_min", "y_min", "x_max", "y_max", "label", "confidence", "review",
              "review_reason", "unknown", "at_edge"] + [f"prob_{c}" for c in classes]
    rows = []
    for r in records:
        row = {"image": r.image, "cell_id": r.cell_id, "x_min": r.box[0], "y_min": r.box[1], "x_max": r.box[2],
               "y_max": r.box[3], "label": r.label, "confidence": f"{r.confidence:.4f}", "review": int(r.review),
               "review_reason": r.review_reason, "unknown": int(r.unknown), "at_edge": int(r.at_edge)}
        row.update({f"prob_{c}": f"{r.probabilities[c]:.4f}" for c in classes})
        rows.append(row)
    return rows, fields


def write_outputs(res: SampleResult, classes: list[str], cfg: CountConfig, threshold: float,
                  unknown_threshold: float | None = None) -> None:
    """``cells.csv``, ``differential.json``, ``differential.png`` and ``report.html`` of one sample."""
    out = res.out_dir
    rows, fields = _cells_rows(res.cells, classes)
    write_csv(out / "cells.csv", rows, fields)
    d = res.differential.to_dict()
    d["images"] = [{"image": s.image, "width": s.width, "height": s.height, "n_cells": s.n_cells,
                    "quality": s.quality, "error": s.error, "annotated": s.annotated} for s in res.images]
    d["method"] = {"model": str(cfg.model) if cfg.model else "bundled default", "review_threshold": threshold,
                   "unknown_threshold": unknown_threshold, "n_unknown": sum(r.unknown for r in res.cells),
                   "rbc_px": res.rbc_px, "detection": cfg.detection.to_dict(),
                   "seconds": round(res.seconds, 3)}
    write_json(out / "differential.json", d)
    plot_differential(res.differential, out / "differential.png")
    write_report(res, cfg, threshold)


def _img_tag(data: bytes, alt: str, mime: str = "image/jpeg", style: str = "") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    st = f' style="{style}"' if style else ""
    return f'<img src="data:{mime};base64,{b64}" alt="{escape(alt)}"{st}>'


def _gallery(records: list[CellRecord], per_type: int) -> str:
    by_type: dict[str, list[CellRecord]] = {}
    for r in records:
        by_type.setdefault(r.label, []).append(r)
    order = [c for c in LEUKOCYTES if c in by_type] + sorted(c for c in by_type if c not in LEUKOCYTES)
    parts = []
    for c in order:
        cells = sorted(by_type[c], key=lambda r: (not r.review, r.confidence))  # review cells first
        n_rev = sum(r.review for r in cells)
        parts.append(f"<h3>{escape(display_name(c))}: {len(cells)} cell(s), {n_rev} for review</h3>")
        figs = []
        for r in cells[:per_type]:
            border = "3px dashed #9a6700" if r.review else "1px solid #d0d7de"
            cap = f"#{r.cell_id} {r.confidence:.2f}" + (" unknown" if r.unknown else " review" if r.review else "")
            img = _img_tag(r.thumbnail, cap, style=f"width:96px;height:96px;object-fit:contain;border:{border}")
            figs.append(f'<figure style="margin:0;width:100px;text-align:center">{img}'
                        f'<figcaption style="font-size:.75rem">{escape(cap)}</figcaption></figure>')
        parts.append('<div style="display:flex;flex-wrap:wrap;gap:6px">' + "".join(figs) + "</div>")
        if len(cells) > per_type:
            parts.append(f'<p class="muted">{len(cells) - per_type} more in cells.csv.</p>')
    return "".join(parts) or '<p class="muted">No cells.</p>'


def write_report(res: SampleResult, cfg: CountConfig, threshold: float, extra: Sequence[Section] = ()) -> Path:
    """``report.html``; ``extra`` sections (e.g. a reviewer's sign-off) follow the summary."""
    d = res.differential
    n_img = sum(s.error is None for s in res.images)
    summary = (f"Sample {d.sample_id}: {d.n_cells} leukocytes counted in {n_img} field(s); {d.n_review} marked "
               f"for review (calibrated confidence < {threshold:g}, unknown to the model, or a field with a quality "
               "warning). "
               f"Reference ranges: {d.reference_ranges.get('name')} — band {d.reference_ranges.get('label')}.")
    if d.nrbc_per_100_wbc is not None:
        summary += f"\n\nErythroblasts: {d.nrbc_per_100_wbc:g} per 100 leukocytes (not in the differential)."
    if d.n_excluded:
        summary += f"\n\n{d.n_excluded} detection(s) classified as platelets (clumps) are listed but not counted."
    sections: list[Section] = [note_section("Summary", summary), *extra]
    if d.flags or d.warnings:
        lines = [f"{f['flag'].replace('_', ' ')} ({f['basis']}: {f['value']:g}"
                 + (f", reference {f['reference'][0]:g}–{f['reference'][1]:g}" if f.get("reference") else "")
                 + (", outside even at the 95 % interval" if f.get("significant") and f["basis"] != "count" else
                    ", within the 95 % interval of the reference: borderline" if f["basis"] != "count" else "")
                 + ")" for f in d.flag_details]
        text = ("Flags: " + "; ".join(lines) + "." if lines else "No flags.") + (
            "\n\n" + "\n\n".join(d.warnings) if d.warnings else "")
        sections.append(note_section("Flags and warnings", text, kind="warning"))
    sections.append(Section("Differential", html_table(d.table(), caption="Leukocyte differential")
                            + _img_tag((res.out_dir / "differential.png").read_bytes(), "differential chart",
                                       "image/png", "max-width:100%")))
    quality_rows = [{"Image": Path(s.image).name, "Cells": s.n_cells if s.error is None else None,
                     "Quality": ", ".join(q.replace("_", " ") for q in s.quality)
                     or ("unreadable" if s.error else "ok"), "Error": s.error} for s in res.images]
    sections.append(table_section("Fields", quality_rows, text="Every field with its cell count and quality flags."))
    figs = []
    shown = [s for s in res.images if s.preview]
    for s in shown:
        figs.append(f"<figure>{_img_tag(s.preview, Path(s.image).name, style='max-width:100%')}"
                    f"<figcaption>{escape(Path(s.image).name)}: {s.n_cells} WBC</figcaption></figure>")
    more = len([s for s in res.images if s.annotated]) - len(shown)
    note = f'<p class="muted">{more} more field(s) in annotated/.</p>' if more > 0 else ""
    sections.append(Section("Annotated fields", "".join(figs) + note or '<p class="muted">No fields.</p>'))
    sections.append(Section("Cells by type", _gallery(res.cells, cfg.gallery_per_type)))
    return write_html_report(res.out_dir / "report.html", f"WBC differential — {d.sample_id}", sections,
                             subtitle="Automated count; cells marked for review need a human look.")


def run_count(cfg: CountConfig) -> list[SampleResult]:
    """Count every sample of ``cfg.inputs``; one sample writes into ``cfg.out``, several into ``cfg.out/<id>/``.

    Raises:
        WbcError: no images in the inputs, no readable image at all, or a bad option.
    """
    from .inference import load_predictor

    if cfg.wbc_count is not None and (not math.isfinite(cfg.wbc_count) or cfg.wbc_count < 0):
        raise WbcError(f"--wbc-count must be a non-negative number of 10^9 cells per litre, got {cfg.wbc_count}")
    if cfg.rbc_px is not None and cfg.rbc_px <= 0:
        raise WbcError(f"--rbc-diameter must be positive (pixels), got {cfg.rbc_px}")
    samples = find_samples(cfg.inputs, cfg.sample_id)
    if not samples:
        raise WbcError(f"no images found in {' '.join(map(str, cfg.inputs))}")
    select_band(load_ranges(cfg.ranges), cfg.age, cfg.sex)  # fail early on a bad ranges file or age
    predictor = load_predictor(cfg.model, precision=cfg.precision, backend=cfg.backend)
    out = Path(cfg.out)
    results = []
    for s in samples:
        target = out if len(samples) == 1 else out / _safe_name(s.sample_id)
        results.append(count_sample(s, target, predictor, cfg))
    if all(all(im.error is not None for im in r.images) for r in results):
        raise WbcError("no readable image: " + "; ".join(f"{Path(im.image).name}: {im.error}"
                                                         for r in results for im in r.images[:3]))
    if len(results) > 1:
        write_samples_table(results, out)
    return results


def _safe_name(name: str) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "sample"


def write_samples_table(results: list[SampleResult], out: Path) -> None:
    """``samples.csv``: one row per sample with counts and percentages (the input of ``wbc agreement``)."""
    fields = ["sample_id", "n_cells", "n_review"] + list(LEUKOCYTES) + [f"{c}_percent" for c in LEUKOCYTES] + ["flags"]
    rows = []
    for r in results:
        d = r.differential
        row: dict[str, Any] = {"sample_id": d.sample_id, "n_cells": d.n_cells, "n_review": d.n_review,
                               "flags": ";".join(d.flags)}
        row.update({c: d.counts.get(c, 0) for c in LEUKOCYTES})
        row.update({f"{c}_percent": d.percent[c] for c in LEUKOCYTES})
        rows.append(row)
    write_csv(out / "samples.csv", rows, fields)
