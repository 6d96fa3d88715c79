"""Finding labelled images on disk and reading them safely.

Supported layouts (see :func:`discover`):

* a class-per-folder tree (``root/<class>/*.jpg``), class names matched through
  :func:`wbc.classes.canonical_label` (case, plural and synonyms);
* a tree with split folders above the class folders, e.g. the Kaggle
  ``dataset2-master/images/{TRAIN,TEST}/<CLASS>`` layout; every record keeps its split;
* the PBC layout (``PBC_dataset_normal_DIB/<class>``), which is a class tree;
* a CSV manifest with columns ``path,label[,group]`` (paths relative to the CSV).
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .classes import canonical_label
from .errors import BadImageError, BadImagesError, WbcError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test", "test_simple": "test_simple"}
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
#: Decompression-bomb guard: refuse images above this many pixels (a 16k x 12k scan is fine).
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageRecord:
    """One image: where it is, its canonical label (if known), its group and its split."""

    path: Path
    label: str | None = None
    group: str | None = None
    split: str | None = None


@dataclass
class Dataset:
    records: list[ImageRecord]
    layout: str
    root: Path
    problems: list[BadImageError] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label is not None})

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.records).items()))

    def split(self, name: str) -> "Dataset":
        recs = [r for r in self.records if r.split == name]
        return Dataset(recs, self.layout, self.root, self.problems)

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records if r.split})


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert grayscale, palette, RGBA, CMYK and 16-bit images to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Read an image as 8-bit RGB, or raise :class:`BadImageError` saying why not."""
    path = Path(path)
    if not path.exists():
        raise BadImageError(path, "file not found")
    if path.is_dir():
        raise BadImageError(path, "is a folder, not an image")
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise BadImageError(path, f"unsupported file type '{path.suffix or '(none)'}'; "
                                  f"expected one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    try:
        if path.stat().st_size == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                rgb = to_rgb(img)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (content is not a known image format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(path, f"image too large (over {MAX_PIXELS:,} pixels; possible decompression bomb)") from None
    except OSError as exc:
        reason = str(exc) or exc.__class__.__name__
        if "truncated" in reason.lower():
            reason = "truncated image file"
        raise BadImageError(path, f"cannot decode image ({reason})") from None
    except (ValueError, SyntaxError) as exc:  # PIL raises these for some corrupt headers
        raise BadImageError(path, f"corrupt image ({exc})") from None
    if rgb.width < 2 or rgb.height < 2:
        raise BadImageError(path, f"image is too small ({rgb.width}x{rgb.height})")
    return rgb


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower() not in IGNORED_NAMES)


def _class_dirs(folder: Path) -> dict[Path, str] | None:
    """Map sub-folders to canonical classes if ``folder`` is a class tree, else ``None``."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        return None
    mapped = {d: canonical_label(d.name) for d in subdirs}
    if all(v is not None for v in mapped.values()):
        return mapped  # type: ignore[return-value]
    return None


def _records_from_class_tree(folder: Path, split: str | None, problems: list[BadImageError]) -> list[ImageRecord]:
    records = []
    for sub, label in (_class_dirs(folder) or {}).items():
        for p in sorted(sub.rglob("*")):
            if not p.is_file() or p.name.startswith(".") or p.name.lower() in IGNORED_NAMES:
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append(BadImageError(p, f"unsupported file type '{p.suffix or '(none)'}'"))
                continue
            records.append(ImageRecord(p, label, None, split))
    return records


def read_manifest(csv_path: Path) -> list[ImageRecord]:
    """Read ``path,label[,group][,split]`` rows; paths are relative to the CSV's folder."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
            if "path" not in fields:
                raise WbcError(f"{csv_path}: a manifest needs a 'path' column (and 'label', optionally 'group'); "
                               f"found columns {list(fields)}")
            records = []
            for lineno, row in enumerate(reader, start=2):
                raw_path = (row.get(fields["path"]) or "").strip()
                if not raw_path:
                    raise WbcError(f"{csv_path}:{lineno}: empty path")
                p = Path(raw_path)
                p = p if p.is_absolute() else csv_path.parent / p
                label = None
                if "label" in fields and (row.get(fields["label"]) or "").strip():
                    raw = row[fields["label"]].strip()
                    label = canonical_label(raw)
                    if label is None:
                        raise WbcError(f"{csv_path}:{lineno}: unknown class '{raw}'")
                group = (row.get(fields["group"]) or "").strip() or None if "group" in fields else None
                split = SPLIT_NAMES.get((row.get(fields["split"]) or "").strip().lower()) if "split" in fields else None
                records.append(ImageRecord(p, label, group, split))
    except UnicodeDecodeError:
        raise WbcError(f"{csv_path}: not a UTF-8 text CSV") from None
    return records


def discover(path: str | Path, groups_csv: str | Path | None = None) -> Dataset:
    """Find the labelled images under ``path`` (a folder tree or a CSV manifest).

    Raises :class:`WbcError` when nothing usable is found.
    """
    root = Path(path)
    if not root.exists():
        raise WbcError(f"{root}: no such file or folder")
    problems: list[BadImageError] = []
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise WbcError(f"{root}: expected a folder of class sub-folders or a CSV manifest (path,label[,group])")
        ds = Dataset(read_manifest(root), "manifest", root.parent)
    else:
        ds = _discover_folder(root, problems)
    if groups_csv is not None:
        ds = Dataset(assign_groups(ds.records, Path(groups_csv)), ds.layout, ds.root, ds.problems)
    if not ds.records:
        raise WbcError(f"{root}: found no images; expected <class>/ sub-folders (e.g. neutrophil/, LYMPHOCYTE/), "
                       f"split folders (TRAIN/, TEST/) holding them, or a CSV manifest")
    return ds


def _discover_folder(root: Path, problems: list[BadImageError]) -> Dataset:
    folder = root
    for _ in range(6):  # walk down wrapper folders such as dataset2-master/dataset2-master/images
        if _class_dirs(folder) is not None:
            return Dataset(_records_from_class_tree(folder, None, problems), "class-folders", root, problems)
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_NAMES and _class_dirs(d) is not None]
        if split_dirs:
            records = []
            for d in sorted(split_dirs):
                records += _records_from_class_tree(d, SPLIT_NAMES[d.name.lower()], problems)
            return Dataset(records, "split-folders", root, problems)
        if len(subdirs) == 1 or any(d.name.lower() == "images" for d in subdirs):
            folder = next((d for d in subdirs if d.name.lower() == "images"), subdirs[0] if subdirs else folder)
            continue
        break
    unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and canonical_label(p.name) is None)
    hint = f" (sub-folders not recognised as cell types: {', '.join(unknown[:5])})" if unknown else ""
    raise WbcError(f"{root}: not a labelled dataset{hint}; expected <class>/ sub-folders or a CSV manifest")


def image_files(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image paths, for unlabelled prediction."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out += [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                    and not f.name.startswith(".")]
        else:
            out.append(p)  # missing or non-image files are reported when read
    return out


def _tail_key(path: Path, n: int) -> str:
    return "/".join(part.lower() for part in path.parts[-n:])


def assign_groups(records: list[ImageRecord], groups_csv: Path) -> list[ImageRecord]:
    """Attach a group to every record from a CSV.

    The CSV needs a group column (``group`` or ``same_cell_group``) and either a ``path``
    column or ``file`` plus optional ``class``/``split`` columns (the layout of
    ``blood-cells/provenance/dataset2_source_map.csv``). Records are matched on the
    trailing components of their path (``split/class/file``, ``class/file``, ``file``).
    Records without a match keep their own path as group.
    """
    if not groups_csv.is_file():
        raise WbcError(f"{groups_csv}: groups CSV not found")
    with open(groups_csv, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.lower(): c for c in reader.fieldnames or []}
        gcol = cols.get("group") or cols.get("same_cell_group")
        if gcol is None or not ({"path", "file"} & cols.keys()):
            raise WbcError(f"{groups_csv}: needs a 'group' (or 'same_cell_group') column and a 'path' or 'file' column")
        table: dict[str, str] = {}
        for row in reader:
            if "path" in cols:
                key_parts = Path(row[cols["path"]]).parts
            else:
                key_parts = tuple(row[cols[c]] for c in ("split", "class") if c in cols) + (row[cols["file"]],)
            n = len(key_parts)
            table[_tail_key(Path(*key_parts), n) + f"#{n}"] = row[gcol]
    depths = sorted({int(k.rsplit("#", 1)[1]) for k in table}, reverse=True)
    out, matched = [], 0
    for r in records:
        group = None
        for n in depths:
            group = table.get(_tail_key(r.path, n) + f"#{n}")
            if group is not None:
                break
        matched += group is not None
        out.append(replace(r, group=group if group is not None else (r.group or str(r.path))))
    if matched == 0:
        raise WbcError(f"{groups_csv}: none of the {len(records)} images matched a row; "
                       "check that its file/class/split columns describe these images")
    if matched < len(records):
        log.warning("%s: %d of %d images have no group row; each is its own group", groups_csv,
                    len(records) - matched, len(records))
    return out


def check_images(records: list[ImageRecord], skip_bad: bool) -> list[ImageRecord]:
    """Open every image; fail with :class:`BadImagesError` or, with ``skip_bad``, warn and drop."""
    good, bad = [], []
    for r in records:
        try:
            load_image(r.path)
            good.append(r)
        except BadImageError as exc:
            bad.append(exc)
    handle_bad(bad, skip_bad)
    return good


def handle_bad(bad: list[BadImageError], skip_bad: bool) -> None:
    if not bad:
        return
    if not skip_bad:
        raise BadImagesError(bad)
    for b in bad[:20]:
        log.warning("skipped %s", b)
    if len(bad) > 20:
        log.warning("skipped %d more unreadable files", len(bad) - 20)
