"""wbc: automated white-blood-cell differential.

The Python API mirrors the CLI::

    from wbc import Predictor, TrainConfig, train, EvalConfig, evaluate, discover
    probs = Predictor().predict_images([PIL.Image.open("cell.jpg")])   # bundled default model
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "discover": "wbc.data", "load_image": "wbc.data", "ImageRecord": "wbc.data",
    "Predictor": "wbc.inference", "load_predictor": "wbc.inference",
    "TrainConfig": "wbc.training", "train": "wbc.training",
    "EvalConfig": "wbc.evaluation", "evaluate": "wbc.evaluation",
    "run_compare": "wbc.compare", "load_model": "wbc.modelio",
    "WbcError": "wbc.errors", "PBC_CLASSES": "wbc.classes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # lazy, so `wbc --help` does not import torch
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wbc' has no attribute {name!r}")
