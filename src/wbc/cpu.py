"""CPU execution settings: bf16 autocast where the processor has native bf16, thread count."""

from __future__ import annotations

import contextlib
import functools
import os
from enum import StrEnum

import torch


class Precision(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP32 = "fp32"


@functools.cache
def bf16_native() -> bool:
    """True when the CPU runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(precision: str | Precision) -> Precision:
    p = Precision(precision)
    if p is Precision.AUTO:
        return Precision.BF16 if bf16_native() else Precision.FP32
    return p


def autocast(precision: str | Precision):
    if resolve(precision) is Precision.BF16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int | None = None) -> int:
    n = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return n
