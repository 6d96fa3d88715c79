"""The two small CNNs of the reference papers, rebuilt layer for layer in PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from .registry import ModelSpec, register


class RisodkarCNN(nn.Module):
    """CNN of Risodkar et al., "Classification of White Blood Cell Using Machine Learning &
    Image Processing Model".

    The paper gives only the Keras ``model.summary()``: conv (98,98,64) -> pool (49,49,64)
    -> conv (24,24,256) -> pool (11,11,256) -> conv (5,5,128) -> pool (4,4,128) -> flatten
    2048 -> dense 256 -> dense 4, with 973,188 trainable parameters for 4 classes. Solving
    the parameter count for the kernel sizes gives 5x5, 3x3, 3x3 (3*5*5*64+64 + 64*3*3*256+256
    + 256*3*3*128+128 + 2048*256+256 + 256*4+4 = 973,188) and the shapes then fix the rest,
    with Keras' default 'valid' padding everywhere:

    ========  =====================  ==========  =============
    layer     kernel / stride        padding     output
    ========  =====================  ==========  =============
    input     102x102x3                          (102,102,3)
    conv1     5x5 /1, 64, ReLU       valid       (98,98,64)
    pool1     max 2x2 /2                         (49,49,64)
    conv2     3x3 /2, 256, ReLU      valid       (24,24,256)
    pool2     max 3x3 /2                         (11,11,256)
    conv3     3x3 /2, 128, ReLU      valid       (5,5,128)
    pool3     max 2x2 /1                         (4,4,128)
    dense     2048 -> 256, ReLU
    dense     256 -> n_classes (softmax in the loss)
    ========  =====================  ==========  =============

    The input is therefore 102x102 (a 5x5 valid conv to 98x98); dropout 0.5 before the
    last dense layer is our addition for regularisation (no parameters).
    """

    def __init__(self, num_classes: int = 4, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 256, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 128, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 1),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2048, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AsgharCNN(nn.Module):
    """CNN of Asghar et al. 2022 (100x100x3 input).

    conv 3x3 32 /1 -> conv 3x3 64 /2 -> conv 3x3 64 /1, each followed by ReLU, max-pool
    2x2 with stride 1 and dropout 0.2; then dense 64 ReLU and the softmax output.
    """

    def __init__(self, num_classes: int = 4, dropout: float = 0.2):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride), nn.ReLU(inplace=True),
                    nn.MaxPool2d(2, 1), nn.Dropout(dropout)]

        self.features = nn.Sequential(*block(3, 32, 1), *block(32, 64, 2), *block(64, 64, 1))
        self.classifier = nn.Sequential(
            # 100 -> conv 98 -> pool 97 -> conv/2 48 -> pool 47 -> conv 45 -> pool 44
            nn.Flatten(), nn.Linear(64 * 44 * 44, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


register(ModelSpec(
    name="risodkar-cnn", build=lambda num_classes, pretrained=False: RisodkarCNN(num_classes),
    img_size=102, min_img_size=102,
    description="3-conv CNN, 973,188 params for 4 classes (layer table in docstring)",
    reference="Risodkar et al., Classification of White Blood Cell Using Machine Learning & Image Processing Model"))
register(ModelSpec(
    name="asghar-cnn", build=lambda num_classes, pretrained=False: AsgharCNN(num_classes),
    img_size=100, min_img_size=100,
    description="3-conv CNN with stride-1 pooling and dropout 0.2, dense 64",
    reference="Asghar et al. 2022"))
