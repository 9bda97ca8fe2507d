"""DomainBed's network for the MNIST domains, and a CPU-sized version of it (registered by plugins/models.py).

DomainBed's `networks.MNIST_CNN` normalises with GroupNorm, not BatchNorm: a model's output on an
image does not depend on the other images of its batch, so an algorithm that forwards each
domain's minibatch on its own (GroupDRO, CORAL, MMD, Mixup, Fish) and one that forwards them
concatenated (ERM, IRM, V-REx) compute the same thing. The tiny recipe's `fast_cnn_gn` keeps that
property at a twentieth of the cost.
"""

from __future__ import annotations

import torch
from torch import nn


class MnistCNN(nn.Module):
    """DomainBed's MNIST_CNN: four 3x3 convolutions (64, 128 stride 2, 128, 128 channels), each
    followed by ReLU then GroupNorm(8), global average pooling to 128 features, a linear head."""

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, stride in ((in_chans, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1)):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(), nn.GroupNorm(8, cout)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FastGroupNormCNN(nn.Module):
    """Two stride-2 3x3 convolutions (16, 32 channels), each followed by ReLU then GroupNorm(8) as in
    MNIST_CNN, pooled to 2x2 (1x1 below 16 pixels), a linear head: ~6 k parameters."""

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, width: int = 16):
        super().__init__()
        side = 1 if img_size < 16 else 2
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1), nn.ReLU(), nn.GroupNorm(8, width),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), nn.GroupNorm(8, 2 * width),
            nn.AdaptiveAvgPool2d(side), nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
