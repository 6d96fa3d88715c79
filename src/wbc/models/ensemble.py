"""An ensemble of trained networks that share classes and preprocessing: the mean of their logits.

It is an ordinary ``nn.Module``, so calibration, ONNX export, int8 quantisation and every
predictor run it as one network (docs/decisions/0015).
"""

from __future__ import annotations

import torch
from torch import nn

#: ``ModelInfo.arch`` of an ensemble; the members' architectures are in ``ModelInfo.members``
ENSEMBLE = "ensemble"


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
