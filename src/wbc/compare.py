"""``wbc compare``: train and evaluate several models on one split; write the papers' table.

Each architecture trains into ``OUT/<arch>/`` and is evaluated into ``OUT/<arch>/eval``.
A finished architecture (its ``eval/metrics.json`` exists) is not trained again, so an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from .classes import display_name
from .evaluation import EvalConfig, evaluate
from .io import write_csv, write_text
from .models.registry import get_spec
from .training import TrainConfig, train

log = logging.getLogger(__name__)


def run_compare(base: TrainConfig, archs: list[str], test_data: str, out: str, *, test_split: str | None = None,
                img_sizes: dict[str, int] | None = None, progress: bool = True) -> list[dict]:
    """Train each arch with ``base`` settings, evaluate on ``test_data``; return one row per arch."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in archs:
        spec = get_spec(arch)  # fail early on an unknown name
        run_dir = out_dir / spec.name
        metrics_path = run_dir / "eval" / "metrics.json"
        if not metrics_path.is_file():
            size = (img_sizes or {}).get(spec.name)
            if size is None and spec.min_img_size == spec.img_size:
                size = spec.img_size
            cfg = replace(base, arch=spec.name, out=str(run_dir), img_size=size or base.img_size,
                          resume=(run_dir / "checkpoint.pt").is_file())
            if not (run_dir / "run.json").is_file():
                train(cfg)
            evaluate(EvalConfig(data=test_data, out=str(run_dir / "eval"), model=str(run_dir), split=test_split,
                                groups=base.groups, progress=progress))
        rows.append(comparison_row(spec.name, run_dir))
    # models finished by earlier calls into the same folder (e.g. a --no-pretrained group) join the table
    done = {r["model"] for r in rows}
    earlier = [comparison_row(d.name, d) for d in sorted(out_dir.iterdir())
               if d.name not in done and (d / "eval" / "metrics.json").is_file() and (d / "run.json").is_file()]
    write_comparison(earlier + rows, out_dir)
    return rows


def comparison_row(arch: str, run_dir: Path) -> dict:
    m = json.loads((run_dir / "eval" / "metrics.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    cfg, res = run["config"], run["result"]
    row = {
        "model": arch, "accuracy": m["accuracy"], "accuracy_ci95": m["accuracy_ci95"],
        "balanced_accuracy": m["balanced_accuracy"], "macro_precision": m.get("macro_precision"),
        "macro_recall": m.get("macro_recall"), "macro_f1": m["macro_f1"], "n_test": m["n_images"],
        "epochs": res.get("epochs_run"), "img_size": cfg.get("img_size") or get_spec(arch).img_size,
        "pretrained": bool(cfg.get("pretrained") and get_spec(arch).pretrained), "max_per_class": cfg.get("max_per_class"),
        "train_seconds": round(res.get("wall_seconds", 0.0)), "n_train": res.get("n_train"),
    }
    for c, pc in m["per_class"].items():
        for k in ("precision", "recall", "f1"):
            row[f"{c}_{k}"] = pc.get(k)
    return row


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def write_comparison(rows: list[dict], out_dir: Path) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(out_dir / "comparison.csv", [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                                           for r in rows], fields)
    lines = ["| model | accuracy % (95% CI) | balanced acc % | macro P % | macro R % | macro F1 % | epochs | "
             "input | pretrained | train images | train time |", "|" + "---|" * 11]
    for r in rows:
        lo, hi = r["accuracy_ci95"]
        lines.append(f"| {r['model']} | {_pct(r['accuracy'])} ({_pct(lo)}–{_pct(hi)}) | {_pct(r['balanced_accuracy'])} | "
                     f"{_pct(r['macro_precision'])} | {_pct(r['macro_recall'])} | {_pct(r['macro_f1'])} | {r['epochs']} | "
                     f"{r['img_size']} px | {'ImageNet' if r['pretrained'] else 'no'} | {r['n_train']} | "
                     f"{r['train_seconds'] / 60:.1f} min |")
    classes = sorted({k.rsplit("_", 1)[0] for r in rows for k in r if k.endswith("_f1") and k != "macro_f1"})
    lines += ["", "Per class (precision / recall / F1, %):", "",
              "| model | " + " | ".join(display_name(c) for c in classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for r in rows:
        cells = [f"{_pct(r.get(f'{c}_precision'))} / {_pct(r.get(f'{c}_recall'))} / {_pct(r.get(f'{c}_f1'))}"
                 for c in classes]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    write_text(out_dir / "comparison.md", "\n".join(lines) + "\n")
