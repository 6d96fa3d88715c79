"""Self-contained HTML reports built from a list of sections.

A report is a title plus a list of :class:`Section` objects, rendered in order; add a section
(calibration, feature importances, ...) by appending another ``Section``. The page is one file
that works offline: inline CSS, images embedded as base64 ``data:`` URIs, no scripts, and a
Content-Security-Policy that forbids any network access. All text is escaped with :func:`html.escape`.

>>> html = render_html("Run <1>", [note_section("Data", "3 classes & 12 images")])
>>> "Run &lt;1&gt;" in html and "3 classes &amp; 12 images" in html
True
"""

from __future__ import annotations

import base64
import math
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from .io import write_text

__all__ = ["Section", "html_table", "image_section", "metrics_section", "note_section", "render_html",
           "table_section", "write_html_report"]

NA = "—"

CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --stripe: #f6f8fa; --accent: #0b5cad; --warn: #9a6700; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); margin: 0 auto; max-width: 1100px; padding: 1.5rem 1.25rem 4rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2.25rem 0 .6rem; padding-bottom: .25rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1rem; margin: 1.25rem 0 .4rem; }
.subtitle, .caption, .muted { color: var(--muted); }
nav ol { columns: 2; margin: .5rem 0 0; padding-left: 1.25rem; }
a { color: var(--accent); }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid var(--line); padding: .3rem .65rem; text-align: left; vertical-align: top; }
thead th { background: var(--stripe); border-bottom: 2px solid var(--fg); }
tbody tr:nth-child(even) { background: var(--stripe); }
td.num, th.num { text-align: right; }
td.diag { font-weight: 700; text-decoration: underline; }
td.na { color: var(--muted); text-align: center; }
figure { margin: .5rem 0 1rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .9rem; }
.note { border-left: 4px solid var(--accent); background: var(--stripe); padding: .5rem .9rem; margin: .5rem 0; }
.note.warning { border-left-color: var(--warn); }
.note p { margin: .35rem 0; }
.table-wrap { overflow-x: auto; }
@media print { body { max-width: none; } h2 { break-after: avoid; } figure, table { break-inside: avoid; } }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class Section:
    """One report section: a heading and its body, which must be trusted (already escaped) HTML.

    Build bodies with the helpers in this module, which escape all text.
    """

    title: str
    html: str


def _fmt(value: Any, digits: int = 3) -> tuple[str, str]:
    """``(escaped text, css class)`` for a table cell; ``None``/NaN show as a dash."""
    if value is None or (isinstance(value, Real) and not math.isfinite(value)):
        return NA, "na"
    if isinstance(value, (bool, np.bool_)):
        return escape(str(bool(value))), ""
    if isinstance(value, Integral):
        return f"{int(value):,}", "num"
    if isinstance(value, Real):
        return f"{float(value):.{digits}f}", "num"
    return escape(str(value)), ""


def _cell(value: Any, header: bool = False, extra: str = "") -> str:
    text, cls = _fmt(value)
    cls = " ".join(c for c in (cls, extra) if c)
    tag = "th" if header else "td"
    attrs = (f' class="{cls}"' if cls else "") + (' scope="row"' if header else "")
    return f"<{tag}{attrs}>{text}</{tag}>"


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
               caption: str | None = None, row_header: bool = True) -> str:
    """An HTML table of ``rows`` (dicts); columns default to the keys in order of first appearance.

    Floats are shown with 3 decimals, ``None``/NaN as a dash; the first column is a row header.

    >>> html_table([{"class": "b<", "f1": 0.5, "n": None}]).split("<tbody>")[1]
    '<tr><th scope="row">b&lt;</th><td class="num">0.500</td><td class="na">—</td></tr></tbody></table></div>'
    """
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f'<th scope="col">{escape(str(c))}</th>' for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c), header=row_header and i == 0) for i, c in enumerate(columns))
                   + "</tr>" for r in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _paragraphs(text: str) -> str:
    """Escaped ``<p>`` elements, one per blank-line-separated paragraph (at least one)."""
    return "".join(f"<p>{escape(p.strip())}</p>" for p in re.split(r"\n\s*\n", text.strip()) if p.strip()) or "<p></p>"


def _ci(ci: Sequence[float | None] | None) -> str | None:
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return f"{ci[0]:.3f} – {ci[1]:.3f}"


def metrics_section(metrics: Mapping[str, Any], title: str = "Classification metrics") -> Section:
    """Overall table with 95% CIs, per-class table and confusion-matrix table.

    ``metrics`` is the dict returned by :func:`wbc.metrics.classification_metrics`.
    """
    overall = [
        {"Metric": "Accuracy", "Value": metrics["accuracy"], "95% CI": _ci(metrics.get("accuracy_ci95"))},
        {"Metric": "Balanced accuracy (macro recall)", "Value": metrics["balanced_accuracy"],
         "95% CI": _ci(metrics.get("balanced_accuracy_ci95"))},
        {"Metric": "Macro F1", "Value": metrics["macro_f1"], "95% CI": _ci(metrics.get("macro_f1_ci95"))},
        {"Metric": "Macro precision", "Value": metrics.get("macro_precision"), "95% CI": "not computed"},
    ]
    per_class = [{"Class": name, "Support": m["support"], "Precision": m["precision"],
                  "Recall (sensitivity)": m["recall"], "Specificity": m["specificity"], "F1": m["f1"], "AUC": m["auc"]}
                 for name, m in metrics["per_class"].items()]
    classes = list(metrics["classes"])
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in classes)
    body = "".join(f'<tr><th scope="row">{escape(t)}</th>'
                   + "".join(_cell(int(v), extra="diag" if i == j else "") for j, v in enumerate(row)) + "</tr>"
                   for i, (t, row) in enumerate(zip(classes, metrics["confusion_matrix"])))
    cm_table = ('<div class="table-wrap"><table><caption>Confusion matrix (rows: true class, columns: predicted; '
                'diagonal underlined)</caption><thead><tr><th scope="col">true \\ predicted</th>'
                f"{head}</tr></thead><tbody>{body}</tbody></table></div>")
    summary = (f"<p>{metrics['n_images']:,} images, {len(classes)} classes. "
               f"95% confidence intervals: {escape(str(metrics.get('ci_method', 'not computed')))}, percentile. "
               "Macro averages are over the classes present in the data.</p>")
    legend = (f'<p class="muted">{NA} = undefined: recall, specificity and AUC need images of the class (and of '
              "other classes); precision needs at least one prediction of the class.</p>")
    return Section(title, summary + html_table(overall, caption="Overall")
                   + html_table(per_class, caption="Per class (one-vs-rest)") + legend + cm_table)


def image_section(title: str, png_path: str | Path, alt: str | None = None, caption: str | None = None) -> Section:
    """The image at ``png_path`` embedded as a base64 ``data:`` URI (the report stays one self-contained file)."""
    path = Path(png_path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Section(title, f'<figure><img src="data:{mime};base64,{data}" alt="{escape(alt or title)}">{cap}</figure>')


def note_section(title: str, text: str, kind: str = "note") -> Section:
    """Plain text (blank lines separate paragraphs), labelled "Note:" or "Warning:" in words, not only by colour."""
    if kind not in ("note", "warning"):
        raise ValueError(f"kind must be 'note' or 'warning', got {kind!r}")
    body = _paragraphs(text).replace("<p>", f"<p><strong>{kind.capitalize()}:</strong> ", 1)
    return Section(title, f'<div class="{"note" if kind == "note" else "note warning"}">{body}</div>')


def table_section(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                  text: str | None = None) -> Section:
    """A table of ``rows`` (see :func:`html_table`), optionally preceded by explanatory ``text``."""
    intro = _paragraphs(text) if text else ""
    return Section(title, intro + (html_table(rows, columns) if rows else '<p class="muted">No rows.</p>'))


def _anchor(i: int, title: str) -> str:
    return f"s{i}-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section")


def render_html(title: str, sections: Sequence[Section], subtitle: str | None = None) -> str:
    """The full HTML page: title, optional subtitle, a contents list (2+ sections), then each section in order."""
    anchors = [_anchor(i, s.title) for i, s in enumerate(sections, 1)]
    toc = ""
    if len(sections) > 1:
        items = "".join(f'<li><a href="#{a}">{escape(s.title)}</a></li>' for a, s in zip(anchors, sections))
        toc = f'<nav aria-label="Contents"><ol>{items}</ol></nav>'
    body = "".join(f'<section id="{a}"><h2>{escape(s.title)}</h2>{s.html}</section>' for a, s in zip(anchors, sections))
    sub = f'<p class="subtitle">{escape(subtitle)}</p>' if subtitle else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><header><h1>{escape(title)}</h1>{sub}{toc}</header>\n<main>{body}</main></body></html>\n")


def write_html_report(path: str | Path, title: str, sections: Sequence[Section], subtitle: str | None = None) -> Path:
    """Render the sections to one self-contained HTML file, written atomically."""
    write_text(path, render_html(title, sections, subtitle))
    return Path(path)
