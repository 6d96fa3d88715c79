"""Reference intervals for the leukocyte differential: the bundled adult defaults or a lab's own file.

A file holds one or more *bands* (an age range, optionally a sex), each with relative intervals
(% of leukocytes), absolute intervals (x10^9/L) and optionally the total WBC interval. Two
formats are read (see docs/reference_ranges.md):

* JSON, the layout of ``wbc/assets/reference_ranges.json``;
* CSV in long form, one row per band and cell type:
  ``age_min,age_max,sex,cell,relative_low,relative_high,absolute_low,absolute_high``
  (``cell`` = ``wbc`` for the total count; empty cells mean "no interval").

Ages are in years; a band covers ``age_min <= age < age_max`` (empty = open).

>>> table = load_ranges()
>>> band = select_band(table, age=40)
>>> band.label, band.relative["neutrophil"], band.absolute["lymphocyte"]
('adult', (40.0, 80.0), (1.0, 3.0))
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .classes import canonical_label
from .errors import WbcError

Interval = tuple[float, float]


@dataclass(frozen=True)
class RangeBand:
    """Reference intervals for one age (and optionally sex) group."""

    label: str
    age_min: float | None = None
    age_max: float | None = None
    sex: str | None = None
    relative: dict[str, Interval] = field(default_factory=dict)  # % of leukocytes
    absolute: dict[str, Interval] = field(default_factory=dict)  # x10^9/L
    wbc: Interval | None = None  # total leukocytes, x10^9/L
    default: bool = False

    def covers(self, age: float | None, sex: str | None = None) -> bool:
        if age is not None:
            if self.age_min is not None and age < self.age_min:
                return False
            if self.age_max is not None and age >= self.age_max:
                return False
        return self.sex is None or sex is None or self.sex == sex

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RangeTable:
    name: str
    source: str
    bands: tuple[RangeBand, ...]
    path: str | None = None


def default_ranges_path() -> Path:
    return Path(str(resources.files("wbc") / "assets" / "reference_ranges.json"))


def _interval(value: Any, where: str) -> Interval | None:
    if value is None or value == "" or value == []:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise WbcError(f"{where}: an interval must be [low, high], got {value!r}")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise WbcError(f"{where}: interval bounds must be numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise WbcError(f"{where}: low must be <= high and both finite, got {value!r}")
    return lo, hi


def _cell(name: str, where: str) -> str:
    label = canonical_label(name)
    if label is None:
        raise WbcError(f"{where}: unknown cell type '{name}'")
    return label


def _age(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise WbcError(f"{where}: age must be a number of years, got {value!r}") from None


def _sex(value: Any) -> str | None:
    text = str(value or "").strip().lower()
    return {"m": "male", "male": "male", "f": "female", "female": "female"}.get(text) if text else None


def _band_from_dict(d: dict[str, Any], where: str) -> RangeBand:
    rel = {_cell(k, where): iv for k, v in (d.get("relative") or {}).items()
           if (iv := _interval(v, f"{where} relative.{k}")) is not None}
    ab = {_cell(k, where): iv for k, v in (d.get("absolute") or {}).items()
          if (iv := _interval(v, f"{where} absolute.{k}")) is not None}
    age_min, age_max = _age(d.get("age_min"), where), _age(d.get("age_max"), where)
    label = str(d.get("label") or _age_label(age_min, age_max))
    return RangeBand(label, age_min, age_max, _sex(d.get("sex")), rel, ab, _interval(d.get("wbc"), f"{where} wbc"),
                     bool(d.get("default", False)))


def _age_label(age_min: float | None, age_max: float | None) -> str:
    fmt = lambda a: f"{a:g}"  # noqa: E731
    if age_min is None and age_max is None:
        return "all ages"
    if age_max is None:
        return f"{fmt(age_min)}+ y"
    return f"{fmt(age_min or 0)}-{fmt(age_max)} y"


def _read_json(path: Path) -> RangeTable:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WbcError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(d, dict) or not isinstance(d.get("bands"), list) or not d["bands"]:
        raise WbcError(f"{path}: expected an object with a non-empty 'bands' list (see docs/reference_ranges.md)")
    bands = tuple(_band_from_dict(b, f"{path} band {i + 1}") for i, b in enumerate(d["bands"]))
    return RangeTable(str(d.get("name") or path.stem), str(d.get("source") or "not stated"), bands, str(path))


CSV_COLUMNS = ("age_min", "age_max", "sex", "cell", "relative_low", "relative_high", "absolute_low", "absolute_high")


def _read_csv(path: Path) -> RangeTable:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "cell" not in cols:
            raise WbcError(f"{path}: a ranges CSV needs a 'cell' column; expected columns {', '.join(CSV_COLUMNS)}")
        bands: dict[tuple, dict[str, Any]] = {}
        for lineno, row in enumerate(reader, start=2):
            get = lambda k: (row.get(cols[k]) or "").strip() if k in cols else ""  # noqa: E731
            where = f"{path}:{lineno}"
            key = (_age(get("age_min"), where), _age(get("age_max"), where), _sex(get("sex")))
            band = bands.setdefault(key, {"age_min": key[0], "age_max": key[1], "sex": key[2],
                                          "relative": {}, "absolute": {}, "wbc": None})
            cell = get("cell")
            rel = [get("relative_low"), get("relative_high")]
            ab = [get("absolute_low"), get("absolute_high")]
            if cell.lower() in ("wbc", "total", "leukocytes", "leucocytes"):
                band["wbc"] = ab if any(ab) else None
                continue
            name = _cell(cell, where)
            if any(rel):
                band["relative"][name] = rel
            if any(ab):
                band["absolute"][name] = ab
    if not bands:
        raise WbcError(f"{path}: no rows")
    out = []
    for i, b in enumerate(bands.values()):
        out.append(_band_from_dict(b, f"{path} band {i + 1}"))
    return RangeTable(path.stem, f"lab file {path.name}", tuple(out), str(path))


def load_ranges(path: str | Path | None = None) -> RangeTable:
    """The bundled adult defaults (``path=None``) or a lab's own JSON/CSV file.

    Raises:
        WbcError: the file is missing, malformed, or names an unknown cell type.
    """
    p = default_ranges_path() if path is None else Path(path)
    if not p.is_file():
        raise WbcError(f"{p}: reference ranges file not found")
    if p.suffix.lower() == ".csv":
        return _read_csv(p)
    return _read_json(p)


def select_band(table: RangeTable, age: float | None = None, sex: str | None = None) -> RangeBand:
    """The band for a patient's age (years) and sex; without an age, the band marked default (else the first).

    Raises:
        WbcError: no band covers ``age``.
    """
    sex = _sex(sex)
    if age is None:
        defaults = [b for b in table.bands if b.default and b.covers(None, sex)]
        return defaults[0] if defaults else next((b for b in table.bands if b.covers(None, sex)), table.bands[0])
    if age < 0:
        raise WbcError(f"age must be >= 0 years, got {age}")
    matches = [b for b in table.bands if b.covers(age, sex)]
    if not matches:
        have = ", ".join(b.label for b in table.bands)
        raise WbcError(f"{table.name}: no reference band covers age {age:g} y (bands: {have}); "
                       "pass --ranges with a file that covers it")
    # prefer the sex-specific band, then the narrowest age band
    return sorted(matches, key=lambda b: (b.sex is None, (b.age_max or 200) - (b.age_min or 0)))[0]
