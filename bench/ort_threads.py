"""What sits between ONNX Runtime and its cores: the input conversion and idle-thread spinning (ADR 0009).

    python bench/ort_threads.py [--rounds 8] [--files 1000]     # ~4 min on 2 cores; prints Markdown

1. Model-only batches (the bundled int8 graph, 512 random 160 px uint8 cells, batch 64), the input
   converted by: a parallel torch op (what the ONNX path did before), the same op with torch at 1 thread,
   NumPy (``augment.onnx_input``, what it does now), ONNX Runtime itself (the conversion folded into the
   graph: uint8 NHWC input, Transpose/Cast/Mul/Add), and nothing (converted beforehand: the ceiling).
2. ``predict_paths`` on PBC JPEG files: ONNX Runtime threads spinning or sleeping when idle, 1 or 2
   decoding workers.
Rounds are interleaved so that a change in machine speed hits every variant alike; medians are printed
with the ratio to the first row of each table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402
from run_all import _pbc_test_paths  # noqa: E402


def _uint8_graph(src: Path, out: Path, mean, std) -> None:
    """The int8 graph with the uint8 -> normalised float conversion as its first nodes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from wbc.augment import _input_affine
    model = onnx.load(str(src))
    g = model.graph
    old = g.input[0]
    size = old.type.tensor_type.shape.dim[2].dim_value
    for node in g.node:
        node.input[:] = ["input_norm" if x == old.name else x for x in node.input]
    a, b = _input_affine(mean, std)
    g.initializer.extend([numpy_helper.from_array(a.reshape(1, 3, 1, 1), "in_scale"),
                          numpy_helper.from_array(b.reshape(1, 3, 1, 1), "in_offset")])
    pre = [helper.make_node("Transpose", [old.name], ["in_t"], perm=[0, 3, 1, 2]),
           helper.make_node("Cast", ["in_t"], ["in_f"], to=TensorProto.FLOAT),
           helper.make_node("Mul", ["in_f", "in_scale"], ["in_m"]),
           helper.make_node("Add", ["in_m", "in_offset"], ["input_norm"])]
    for i, node in enumerate(pre):
        g.node.insert(i, node)
    g.input.remove(old)
    g.input.insert(0, helper.make_tensor_value_info(old.name, TensorProto.UINT8, ["batch", size, size, 3]))
    onnx.save(model, str(out))


def conversions(rounds: int) -> list[tuple[str, float]]:
    import torch

    from wbc.augment import _input_affine, onnx_input
    from wbc.inference import load_predictor, ort_session
    from wbc.modelio import default_int8_path

    pred = load_predictor(None)
    pre = pred.info.preprocess
    sess = ort_session(default_int8_path(), 2, spinning=True)
    a_t, b_t = (torch.from_numpy(v).view(1, 3, 1, 1) for v in _input_affine(pre.mean, pre.std))
    cells = np.random.default_rng(0).integers(0, 256, (512, pre.img_size, pre.img_size, 3), dtype=np.uint8)
    batches = [cells[i:i + 64] for i in range(0, len(cells), 64)]
    ready = [onnx_input(b, pre.mean, pre.std) for b in batches]

    def torch_op(b):
        return torch.from_numpy(b).permute(0, 3, 1, 2).contiguous().float().mul_(a_t).add_(b_t).numpy()

    def torch_one_thread(b):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return torch_op(b)
        finally:
            torch.set_num_threads(n)

    with tempfile.TemporaryDirectory() as tmp:
        u8_path = Path(tmp) / "uint8.onnx"
        _uint8_graph(default_int8_path(), u8_path, pre.mean, pre.std)
        u8 = ort_session(u8_path, 2, spinning=True)
        variants = {
            "torch op, 2 threads (the ONNX path before)": lambda: [sess.run(None, {"input": torch_op(b)}) for b in batches],
            "torch op, 1 thread": lambda: [sess.run(None, {"input": torch_one_thread(b)}) for b in batches],
            "NumPy (`augment.onnx_input`, now)": lambda: [sess.run(None, {"input": onnx_input(b, pre.mean, pre.std)})
                                                         for b in batches],
            "in the graph (uint8 NHWC input)": lambda: [u8.run(None, {"input": b}) for b in batches],
            "none: converted beforehand (ceiling)": lambda: [sess.run(None, {"input": x}) for x in ready],
        }
        for fn in variants.values():
            fn()  # warm-up
        rates: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                t = time.perf_counter()
                fn()
                rates[name].append(len(cells) / (time.perf_counter() - t))
    return [(k, statistics.median(v)) for k, v in rates.items()]


def files(n: int, rounds: int) -> list[tuple[str, float]]:
    from wbc.inference import load_predictor, ort_session
    from wbc.modelio import default_int8_path

    paths = _pbc_test_paths(n)
    base = load_predictor(None)  # the shipped path; each variant differs only in its session and workers
    variants = {}
    for spinning in (True, False):
        for workers in (1, 2):
            pred = copy.copy(base)
            pred.session, pred.workers = ort_session(default_int8_path(), 2, spinning), workers
            variants[f"threads {'spinning' if spinning else 'sleeping'}, {workers} worker(s)"] = pred
    for pred in variants.values():
        list(pred.predict_paths(paths[:200]))  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, pred in variants.items():
            t = time.perf_counter()
            k = sum(1 for _ in pred.predict_paths(paths))
            rates[name].append(k / (time.perf_counter() - t))
    return [(k, statistics.median(v)) for k, v in rates.items()]


def table(title: str, rows: list[tuple[str, float]]) -> str:
    base = rows[0][1]
    lines = [f"| {title} | cells/s (median) | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.0f} | {rate / base:.2f}x |" for name, rate in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--files", type=int, default=1000)
    a = ap.parse_args(argv)
    mi = machine_info()
    print(f"Machine: {mi['cpu']}, {mi['logical_cores']} cores, load average at start {mi['load_average_1m']}.\n")
    print(table("input conversion before each int8 `session.run` (batch 64)", conversions(a.rounds)) + "\n")
    print(table(f"`predict_paths` on {a.files} PBC JPEG files", files(a.files, max(1, a.rounds // 4))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
