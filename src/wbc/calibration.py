"""Confidence calibration: temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """Return the temperature T > 0 minimising the NLL of ``softmax(logits / T)``.

    >>> round(fit_temperature(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1])), 2) < 1
    True
    """
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    logits = logits.detach().float()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
