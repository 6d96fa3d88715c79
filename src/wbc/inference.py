"""Batched prediction with any trained model, streaming over files.

Decoding and preprocessing run in worker processes (torch ``DataLoader``) while the model runs
in the main process: ONNX Runtime (the bundled model's int8 graph), or torch channels_last under
bf16 autocast where the CPU supports it. Memory does not grow with the number of images: results
are yielded batch by batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from .progress import progress as progress_bar

from . import cpu
from .augment import model_input, onnx_input
from .data import load_image
from .errors import BadImageError, WbcError
from .modelio import ModelInfo, default_int8_path, load_model, resolve_model_path
from .ood import abstain_unstained
from .preprocessing import prepare_checked


@dataclass(frozen=True)
class Prediction:
    path: Path
    label: str
    confidence: float
    probabilities: dict[str, float]
    unknown: bool = False  # unlike any cell the model knows: energy below the model's threshold (wbc.ood)
    ood_score: float | None = None  # logit energy (neural) or max probability (classical); higher = more familiar


class Classifier(Protocol):
    """What every predictor offers (neural and classical)."""

    classes: list[str]
    info: ModelInfo

    def predict_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def predict_paths(self, paths: Iterable[Path], *, skip_bad: bool = False, progress: bool = False,
                      bad: list[BadImageError] | None = None) -> Iterator[tuple[Path, np.ndarray]]: ...


class _Files(TorchDataset):
    def __init__(self, paths: list[Path], info: ModelInfo):
        self.paths, self.pre = paths, info.preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, *prepare_checked(load_image(self.paths[i]), self.pre), None
        except BadImageError as exc:
            return i, None, True, exc.reason


def _collate(items):
    return items


def softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Backend(StrEnum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


def onnx_session(model: str | Path | None, threads: int):
    """An ONNX Runtime session and the model info; exports (and caches) ONNX from a torch model."""
    import onnx

    path = resolve_model_path(model)
    if path.suffix != ".onnx":
        from .export import export_model
        from .imageset import default_cache_dir
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
        cached = default_cache_dir() / "onnx" / f"{key}.onnx"
        if not cached.is_file():
            export_model(path, cached, "onnx")
        path = cached
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "wbc" not in meta:
        raise WbcError(f"{path}: an ONNX file without wbc model information; export it with `wbc export`")
    return ort_session(path, threads), ModelInfo.from_json(meta["wbc"])


def ort_session(path: str | Path, threads: int, spinning: bool = False):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads.

    Idle threads sleep unless ``spinning``: spinning ones take a core from the decoding workers and from
    `wbc count`'s detection between batches (docs/benchmarks.md, "What feeds ONNX Runtime"; docs/decisions/0009).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: the quantised graph's harmless "unused initializer" notes stay quiet
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def fuse_batchnorm(net: torch.nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into the convolution (eval only).

    Inference-only speed-up: the profiler showed BatchNorm at ~25 % of MobileNetV2's CPU time. Returns
    the number of folded layers; the outputs are unchanged up to float rounding.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    n = 0
    for module in net.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        children = list(module.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if type(a) is torch.nn.Conv2d and type(b) is torch.nn.BatchNorm2d and b.track_running_stats:
                setattr(module, name_a, fuse_conv_bn_eval(a.eval(), b.eval()))
                setattr(module, name_b, torch.nn.Identity())
                n += 1
    return n


class Predictor:
    """Neural-network predictor. ``Predictor()`` loads the bundled default model.

    ``backend="onnxruntime"`` runs the same network through ONNX Runtime (fp32); a
    ``.safetensors`` model is exported to ONNX once and cached.
    """

    def __init__(self, model: str | Path | None = None, *, precision: str = "auto", batch_size: int = 64,
                 threads: int | None = None, backend: str = "torch"):
        n_threads = cpu.set_threads(threads)
        self.backend = Backend(backend)
        if self.backend is Backend.ONNXRUNTIME:
            self.session, self.info = onnx_session(model, n_threads)
            self.net = None
        else:
            net, self.info = load_model(model)
            fuse_batchnorm(net.eval())
            self.net = net.to(memory_format=torch.channels_last).eval()
        self.classes = list(self.info.classes)
        self.precision = cpu.resolve(precision)
        self.batch_size = batch_size
        # decoding + WBC-centring + colour normalisation processes for file input: 2 beat 1 on 2 cores
        # (docs/decisions/0009); more cores get more, up to 4
        self.workers = max(1, min(4, n_threads))

    @torch.inference_mode()
    def logits_arrays(self, arrays: np.ndarray) -> np.ndarray:
        """Raw logits for preprocessed uint8 arrays (N, S, S, 3)."""
        out = []
        pre = self.info.preprocess
        for i in range(0, len(arrays), self.batch_size):
            chunk = arrays[i:i + self.batch_size]
            if self.net is None:
                out.append(self.session.run(None, {"input": onnx_input(chunk, pre.mean, pre.std)})[0])
                continue
            x = model_input(torch.from_numpy(np.ascontiguousarray(chunk)), pre.mean, pre.std)
            with cpu.autocast(self.precision):
                out.append(self.net(x).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict_arrays(self, arrays: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for preprocessed uint8 arrays (N, S, S, 3)."""
        return softmax_np(self.logits_arrays(arrays), self.info.temperature)

    def logits_images(self, images: list[Image.Image]) -> np.ndarray:
        """Raw logits for PIL images (the model's preprocessing applied; an image with no stain at all gets
        logits shifted to the energy of zero logits, :func:`wbc.ood.abstain_unstained`)."""
        if not images:
            return self.logits_arrays(np.zeros((0, self.info.preprocess.img_size, self.info.preprocess.img_size, 3),
                                               np.uint8))
        arrays, stained = zip(*(prepare_checked(im.convert("RGB"), self.info.preprocess) for im in images))
        return abstain_unstained(self.logits_arrays(np.stack(arrays)), np.array(stained))

    def predict_images(self, images: list[Image.Image]) -> np.ndarray:
        return softmax_np(self.logits_images(images), self.info.temperature)

    def predict_paths(self, paths: Iterable[Path], *, skip_bad: bool = False, progress: bool = False,
                      bad: list[BadImageError] | None = None) -> Iterator[tuple[Path, np.ndarray]]:
        """Yield ``(path, probabilities)`` per readable image; unreadable ones go to ``bad``."""
        return self._stream(paths, True, skip_bad=skip_bad, progress=progress, bad=bad)

    def logits_paths(self, paths: Iterable[Path], *, skip_bad: bool = False, progress: bool = False,
                     bad: list[BadImageError] | None = None) -> Iterator[tuple[Path, np.ndarray]]:
        """Yield ``(path, raw logits)`` per readable image (for out-of-distribution scores, wbc.ood)."""
        return self._stream(paths, False, skip_bad=skip_bad, progress=progress, bad=bad)

    def _stream(self, paths: Iterable[Path], probs: bool, *, skip_bad: bool, progress: bool,
                bad: list[BadImageError] | None) -> Iterator[tuple[Path, np.ndarray]]:
        """Decode in worker processes, classify in batches; yield probabilities (``probs``) or raw logits per image;
        unstained images get logits shifted to the energy of zero logits (:func:`wbc.ood.abstain_unstained`)."""
        paths = [Path(p) for p in paths]
        workers = self.workers if len(paths) > 2 * self.batch_size else 0
        loader = DataLoader(_Files(paths, self.info), batch_size=self.batch_size, num_workers=workers,
                            collate_fn=_collate, prefetch_factor=4 if workers else None)
        bar = progress_bar(total=len(paths), desc="predicting", unit="img", enabled=progress)
        for items in loader:
            ok = [(i, a, stain) for i, a, stain, err in items if err is None]
            for i, _, _, err in items:
                if err is not None:
                    exc = BadImageError(paths[i], err)
                    if bad is not None:
                        bad.append(exc)
                    if not skip_bad and bad is None:
                        raise exc
            if ok:
                out = abstain_unstained(self.logits_arrays(np.stack([a for _, a, _ in ok])),
                                        np.array([stain for *_, stain in ok]))
                if probs:
                    out = softmax_np(out, self.info.temperature)
                for (i, *_), row in zip(ok, out):
                    yield paths[i], row
            bar.update(len(items))
        bar.close()


def load_predictor(model: str | Path | None = None, **kwargs) -> Classifier:
    """The right predictor for a model file or run folder (neural ``.safetensors``/``.onnx`` or classical ``.skops``).

    ``backend="auto"`` (default): the bundled model runs as its int8 ONNX twin in ONNX Runtime, ``.onnx``
    files in ONNX Runtime, everything else in torch.
    """
    path = resolve_model_path(model)
    if path.suffix == ".skops":
        from .classical import ClassicalPredictor
        return ClassicalPredictor(path)
    backend = kwargs.pop("backend", "auto")
    if path.suffix == ".onnx":
        backend = Backend.ONNXRUNTIME
    elif backend == "auto":
        fast = default_int8_path()
        if model is None and fast.is_file():  # the bundled model's int8 twin (docs/decisions/0009)
            path, backend = fast, Backend.ONNXRUNTIME
        else:
            backend = Backend.TORCH
    return Predictor(path, backend=backend, **kwargs)


def to_prediction(path: Path, probs: np.ndarray, classes: list[str], ood_score: float | None = None,
                  unknown_threshold: float | None = None) -> Prediction:
    k = int(np.argmax(probs))
    unknown = ood_score is not None and unknown_threshold is not None and ood_score < unknown_threshold
    return Prediction(path, classes[k], float(probs[k]), {c: float(p) for c, p in zip(classes, probs)}, unknown,
                      ood_score)


def predict_files(predictor: Classifier, paths: Iterable[Path], *, skip_bad: bool = False, progress: bool = False,
                  bad: list[BadImageError] | None = None) -> Iterator[Prediction]:
    """A :class:`Prediction` per readable image, with the out-of-distribution score and ``unknown`` flag.

    ``unknown`` follows the model's ``unknown_threshold`` (docs/decisions/0013); a model without one
    (classical, or trained before it existed) never calls an image unknown.
    """
    from .ood import model_threshold, score_paths
    thr = model_threshold(predictor)
    for path, probs, score in score_paths(predictor, paths, skip_bad=skip_bad, progress=progress, bad=bad):
        yield to_prediction(path, probs, predictor.classes, score, thr)
