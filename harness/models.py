"""Model factories `(num_classes, in_chans, img_size) -> nn.Module`, the classifier-head seam, and
what protocols compute on trained models (diagonal Fisher information, BatchNorm recalibration).

Every model the harness builds exposes its final linear layer through `get_classifier` /
`set_classifier`, so a method can reshape the head (LDAM's cosine classifier) whatever the
architecture: harness models name it `classifier`, timm models answer `get_classifier()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from harness.errors import HarnessError


@dataclass(frozen=True)
class ModelSource:
    name: str
    summary: str
    build: Callable[[int, int, int], nn.Module]  # (num_classes, in_chans, img_size)
    paper: str = ""
    plugin: str = ""
    plugin_version: str = ""


# ---------------------------------------------------------------------------------------------
# the classifier-head seam
# ---------------------------------------------------------------------------------------------


def get_classifier(model: nn.Module) -> nn.Module:
    if hasattr(model, "get_classifier"):  # timm's documented API
        return model.get_classifier()
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Module):
        raise HarnessError(f"model {type(model).__name__} exposes no classifier head (attribute 'classifier' or get_classifier())")
    return head


def set_classifier(model: nn.Module, head: nn.Module) -> None:
    if hasattr(model, "get_classifier") and not isinstance(getattr(model, "classifier", None), nn.Module):
        # timm: find the attribute that holds the head and replace it in place
        current = model.get_classifier()
        for name, module in model.named_modules():
            if module is current:
                parent_name, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, attr, head)
                return
        raise HarnessError(f"could not locate the classifier of {type(model).__name__} to replace it")
    model.classifier = head


# ---------------------------------------------------------------------------------------------
# what protocols compute on a trained model: diagonal Fisher, BatchNorm recalibration
# ---------------------------------------------------------------------------------------------


def diagonal_fisher(model: nn.Module, x: torch.Tensor, *, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Diagonal of the Fisher information of `model` at its current weights, on float inputs `x`.

    F_i = 1/N sum_n sum_c p(c | x_n) (d log p(c | x_n) / d theta_i)^2: the expectation over the
    model's own predictive distribution, computed exactly (every class, no label sampling), as
    in Kirkpatrick et al. 2017 (EWC) and Matena & Raffel 2022 (Fisher merging). The model runs
    in eval mode (BatchNorm uses its running statistics), so per-sample gradients are exact.
    Returns one float32 tensor per trainable parameter name, on the parameters' device.
    """
    was_training = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    fisher = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in params.items()}

    def log_prob(p: dict[str, torch.Tensor], xi: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return (out.float().log_softmax(-1)[0] * onehot).sum()

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0))
    n = len(x)
    try:
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            with torch.no_grad():
                probs = model(xb).float().softmax(-1)
            for c in range(probs.shape[1]):
                onehot = torch.zeros_like(probs)
                onehot[:, c] = 1.0
                grads = per_sample(params, xb, onehot)
                w = probs[:, c]
                for k, g in grads.items():
                    fisher[k] += (w.view(-1, *([1] * (g.dim() - 1))) * g.float().pow(2)).sum(0)
    finally:
        model.train(was_training)
    return {k: v / max(1, n) for k, v in fisher.items()}


def recalibrate_bn(model: nn.Module, x: torch.Tensor, normalizer: Any, device: str, batch_size: int = 200) -> None:
    """Recompute every BatchNorm's running statistics as the plain average over batches of uint8
    images `x` (normalised by `normalizer`), e.g. after merging weights; leaves the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    norm = normalizer.to(device)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            if len(xb) > 1:
                model(norm(xb.to(device)))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


# ---------------------------------------------------------------------------------------------
# small fast CNN for scale=tiny
# ---------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool blocks and a linear head: ~6 k parameters, seconds per CPU run.

    `fc_hidden > 0` keeps the spatial map and adds a hidden fully connected layer instead of the
    global pooling: ~200 k parameters, enough capacity to memorise noisy labels, which the
    noisy-labels suite needs to rank its methods. BatchNorm layers are kept on purpose:
    test-time adaptation methods adapt them.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, width: int = 16, fc_hidden: int = 0):
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        if fc_hidden:
            side = img_size // 4
            blocks += [nn.Flatten(), nn.Linear(2 * width * side * side, fc_hidden), nn.ReLU(inplace=True)]
            feat = fc_hidden
        else:
            blocks += [nn.AdaptiveAvgPool2d(1) if img_size < 16 else nn.AdaptiveAvgPool2d(2), nn.Flatten()]
            feat = 2 * width * (1 if img_size < 16 else 4)
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(feat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def strided_conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """A 3x3 convolution of stride 2 (padding 1: a side of n becomes (n - 1) // 2 + 1), BatchNorm, ReLU:
    the block of the `fast_cnn` family, which halves the map instead of max-pooling it."""
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FastCNN(nn.Module):
    """Two stride-2 conv-BN-ReLU layers (no max-pooling) and a linear head: ~6 k parameters.

    About six times faster than `SmallCNN` on a CPU (max-pooling over full-resolution maps is
    what costs there), so a grid of dozens of long-tail runs finishes in a minute or two.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            *strided_conv_bn_relu(in_chans, width),
            *strided_conv_bn_relu(width, 2 * width),
            nn.AdaptiveAvgPool2d(1 if img_size < 16 else 2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width * (1 if img_size < 16 else 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FastCNN3(nn.Module):
    """Three stride-2 conv-BN-ReLU layers (16, 32, 64 channels; 28 -> 14 -> 7 -> 4) and a linear
    head over the flattened map (64 x 4 x 4 on 28 x 28 images), no pooling: ~34 k parameters.

    Keeping the spatial layout for the head is what lifts long-tailed MNIST: average-pooling the
    map to 2 x 2 (`fast_cnn`) loses the few-shot classes. The third strided layer keeps an
    epoch as cheap as `fast_cnn`'s on a CPU.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_chans, img_size
        for out in (width, 2 * width, 4 * width):
            layers += strided_conv_bn_relu(channels, out)
            channels, side = out, (side - 1) // 2 + 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------
# CIFAR ResNet-32 (He et al. 2016, Sec. 4.2: 6n+2 layers with n=5, widths 16/32/64)
# ---------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin if (stride != 1 or cin != cout) else 0
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad or self.stride != 1:  # option A: strided identity with zero-padded channels
            shortcut = x[:, :, :: self.stride, :: self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, depth: int = 32):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.layers(self.stem(x))))


# ---------------------------------------------------------------------------------------------
# CIFAR ResNet-18 and PreAct ResNet-18 (3x3 stem, no max-pool: the CIFAR variants used by the
# noisy-label and unlearning literature)
# ---------------------------------------------------------------------------------------------


class _Block18(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, preact: bool):
        super().__init__()
        self.preact = preact
        self.bn1 = nn.BatchNorm2d(cin if preact else cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride, bias=False)]
            if not preact:
                layers.append(nn.BatchNorm2d(cout))
            self.shortcut = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:  # He et al., Identity Mappings in Deep Residual Networks, ECCV 2016
            out = F.relu(self.bn1(x))
            shortcut = self.shortcut(out) if not isinstance(self.shortcut, nn.Identity) else x
            out = self.conv2(F.relu(self.bn2(self.conv1(out))))
            return out + shortcut
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, preact: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.stem_bn = nn.Identity() if preact else nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for i in range(2):
                blocks.append(_Block18(cin, cout, stride if i == 0 else 1, preact))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.final_bn = nn.BatchNorm2d(512) if preact else nn.Identity()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(512, num_classes)
        self.preact = preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = out if self.preact else F.relu(self.stem_bn(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.final_bn(out))
        return self.classifier(self.pool(out))


# ---------------------------------------------------------------------------------------------
# any timm architecture by name
# ---------------------------------------------------------------------------------------------


def timm_model_source(arch: str) -> ModelSource:
    import timm

    if not timm.list_models(arch):
        close = timm.list_models(f"*{arch}*")[:5]
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        raise HarnessError(f"unknown timm model {arch!r}{hint}")

    def build(num_classes: int, in_chans: int, img_size: int) -> nn.Module:
        # pretrained weights would need the hub; the harness trains from scratch
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    import importlib.metadata as md

    return ModelSource(f"timm:{arch}", f"timm architecture {arch}", build, paper="timm (Wightman, 2019)", plugin="timm", plugin_version=md.version("timm"))
