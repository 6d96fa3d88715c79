"""Plots, atomic writers and the self-contained HTML report."""

from __future__ import annotations

import base64
import csv
import doctest
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wbc.report
from wbc import plots
from wbc.io import atomic_open, write_csv, write_json
from wbc.metrics import classification_metrics
from wbc.report import (Section, image_section, metrics_section, note_section, render_html, table_section,
                        write_html_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["neutrophil", "lymphocyte", "monocyte", "<script>alert(1)</script>"]


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)  # the last class is absent from the data
    probs = rng.dirichlet(np.ones(4), n)
    probs[np.arange(n), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    return y, probs


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 80, 120), (90, 90, 200)]):
        path = tmp_path / f"cell_{i}.png"
        Image.new("RGB", (90, 70), colour).save(path)
        paths.append(path)
    return paths


def history_rows():
    return [{"epoch": str(e), "train_loss": 1 / (e + 1), "val_loss": "" if e == 2 else 1.2 / (e + 1),
             "train_acc": 1 - 1 / (e + 2), "val_acc": 0.9 - 1 / (e + 3), "lr": 1e-3} for e in range(6)]


PLOTS = [
    ("confusion", lambda y, p, d: plots.plot_confusion_matrix(
        classification_metrics(y, p, CLASSES, n_boot=0)["confusion_matrix"], CLASSES, d / "cm.png")),
    ("confusion counts", lambda y, p, d: plots.plot_confusion_matrix(
        np.array([[5, 1], [0, 0]]), ["a", "$b$"], d / "cm.png", normalize=False)),
    ("roc", lambda y, p, d: plots.plot_roc(y, p, CLASSES, d / "roc.png")),
    ("history", lambda y, p, d: plots.plot_history(history_rows(), d / "history.png")),
    ("reliability", lambda y, p, d: plots.plot_reliability(y, p, d / "reliability.png")),
    ("coverage", lambda y, p, d: plots.plot_coverage(y, p, d / "coverage.png")),
]


@pytest.mark.parametrize("name,draw", PLOTS, ids=[p[0] for p in PLOTS])
def test_plots_write_png_atomically(name, draw, sample, tmp_path):
    out = draw(*sample, tmp_path / "sub")
    data = Path(out).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp files left behind
    with Image.open(out) as img:
        assert min(img.size) > 200


@pytest.mark.parametrize("n_items", [0, 1, 13])
def test_misclassified_sheet(n_items, images, tmp_path):
    items = [(images[i % 2], "neutrophil", "mono$cyte", 0.87) for i in range(n_items)]
    if n_items:
        items[-1] = (tmp_path / "missing.png", "lymphocyte", "neutrophil", 0.5)  # unreadable: still drawn
    out = plots.misclassified_sheet(items, tmp_path / "sheet.png", max_items=12)
    assert out.read_bytes().startswith(PNG_MAGIC)
    with Image.open(out) as img:
        width = img.size[0]
    assert width > (1000 if n_items > 8 else 100)


def test_plot_argument_checks(tmp_path):
    with pytest.raises(ValueError, match=r"cm must have shape \(3, 3\)"):
        plots.plot_confusion_matrix(np.eye(2), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no loss or accuracy columns"):
        plots.plot_history([{"epoch": 1, "lr": 0.1}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_history([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_write_json_is_strict_and_write_csv_round_trips(tmp_path):
    write_json(tmp_path / "m.json", {"auc": float("nan"), "n": np.int64(3), "ci": np.array([0.1, np.inf]),
                                     "path": tmp_path})
    assert json.loads((tmp_path / "m.json").read_text()) == {"auc": None, "n": 3, "ci": [0.1, None],
                                                             "path": str(tmp_path)}
    rows = [{"path": "a,b.png", "true": "neutrophil", "pred": "monocyte", "confidence": 0.5},
            {"path": "é.png", "true": "lymphocyte", "pred": "lymphocyte", "confidence": None}]
    write_csv(tmp_path / "p.csv", rows, ["path", "true", "pred", "confidence"])
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        back = list(csv.DictReader(fh))
    assert back[0]["path"] == "a,b.png" and back[1] == {"path": "é.png", "true": "lymphocyte",
                                                        "pred": "lymphocyte", "confidence": ""}
    with pytest.raises(ValueError):
        write_csv(tmp_path / "p.csv", [{"typo": 1}], ["path"])
    assert (tmp_path / "p.csv").read_text(encoding="utf-8").startswith("path,true")  # old file intact


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_metrics_section_tables(sample):
    m = classification_metrics(*sample, CLASSES, n_boot=100)
    html = metrics_section(m).html
    assert html.count("<table>") == 3  # overall, per class, confusion matrix
    for text in ("Accuracy", "Balanced accuracy", "Macro F1", "Precision", "Recall (sensitivity)", "Specificity",
                 "AUC", "Support", "bootstrap over images", f"{m['accuracy']:.3f}",
                 f"{m['accuracy_ci95'][0]:.3f} – {m['accuracy_ci95'][1]:.3f}",
                 f"{m['per_class']['monocyte']['specificity']:.3f}"):
        assert text in html, text
    assert '<td class="na">—</td>' in html  # the absent class has undefined recall and AUC
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_is_self_contained_escaped_and_ordered(sample, tmp_path):
    y, probs = sample
    png = plots.plot_roc(y, probs, CLASSES, tmp_path / "roc.png")
    sections = [
        metrics_section(classification_metrics(y, probs, CLASSES, n_boot=50)),
        image_section("ROC <curves>", png, caption="one-vs-rest & AUC"),
        note_section("Class restriction", "Predictions restricted to the data's classes.\n\n<b>2</b> dropped.",
                     kind="warning"),
        table_section("Feature importances", [{"feature": "<img src=x onerror=alert(1)>", "importance": 0.25}]),
        table_section("Empty", []),
    ]
    out = write_html_report(tmp_path / "out" / "report.html", "Evaluation <of> model", sections, subtitle="run & test")
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert embedded and base64.b64decode(embedded.group(1)) == png.read_bytes()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    assert "<script" not in html and "<img src=x" not in html and "<b>2</b>" not in html
    for text in ("Evaluation &lt;of&gt; model", "run &amp; test", "ROC &lt;curves&gt;", "one-vs-rest &amp; AUC",
                 "Warning:", "&lt;b&gt;2&lt;/b&gt; dropped.", "&lt;img src=x onerror=alert(1)&gt;", "0.250",
                 "No rows.", "<strong>Warning:</strong> Predictions restricted"):
        assert text in html, text
    positions = [html.index(f"<h2>{t}</h2>") for t in ("Classification metrics", "ROC &lt;curves&gt;",
                                                        "Class restriction", "Feature importances", "Empty")]
    assert positions == sorted(positions)
    assert html.count('<li><a href="#s') == len(sections)  # contents list links every section


def test_sections_are_extensible_and_note_kind_checked():
    html = render_html("t", [Section("Calibration", "<p>ECE 0.02</p>")])
    assert "<h2>Calibration</h2><p>ECE 0.02</p>" in html and "<nav" not in html  # one section: no contents list
    with pytest.raises(ValueError, match="kind must be 'note' or 'warning', got 'info'"):
        note_section("x", "y", kind="info")


def test_docstring_examples():
    result = doctest.testmod(wbc.report)
    assert result.attempted > 0 and result.failed == 0
