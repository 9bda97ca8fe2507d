"""Built-in model factories, registered through the same entry-point group as third-party ones."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from harness.models import CifarResNet, CifarResNet18, FastCNN, FastCNN3, ModelSource, SmallCNN
from harness_plugins.domain_networks import FastGroupNormCNN, MnistCNN


@hookimpl
def harness_register_models(register):
    register(
        ModelSource(
            "small_cnn",
            "two conv-BN-ReLU blocks (16 and 32 channels) + linear head: the CPU model of scale=tiny",
            lambda num_classes, in_chans, img_size: SmallCNN(num_classes, in_chans, img_size),
        )
    )
    register(
        ModelSource(
            "fast_cnn",
            "two stride-2 conv-BN-ReLU layers (16, 32 channels), average-pooled to 2x2, + linear head: the calibration and distillation tiny model",
            lambda num_classes, in_chans, img_size: FastCNN(num_classes, in_chans, img_size),
        )
    )
    register(
        ModelSource(
            "fast_cnn3",
            "three stride-2 conv-BN-ReLU layers (16, 32, 64 channels) + linear head over the flattened map: the long-tail tiny model",
            lambda num_classes, in_chans, img_size: FastCNN3(num_classes, in_chans, img_size),
        )
    )
    register(
        ModelSource(
            "small_cnn_fc",
            "two conv-BN-ReLU blocks (16, 32 channels) + a 128-unit fully connected layer: can memorise noisy labels",
            lambda num_classes, in_chans, img_size: SmallCNN(num_classes, in_chans, img_size, fc_hidden=128),
        )
    )
    register(
        ModelSource(
            "resnet32",
            "CIFAR ResNet-32 (3 stages of 5 basic blocks, widths 16/32/64): the long-tail literature's model",
            lambda num_classes, in_chans, img_size: CifarResNet(num_classes, in_chans, depth=32),
            paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
        )
    )
    register(
        ModelSource(
            "resnet20",
            "CIFAR ResNet-20 (3 stages of 3 basic blocks)",
            lambda num_classes, in_chans, img_size: CifarResNet(num_classes, in_chans, depth=20),
            paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
        )
    )
    for depth, use in ((56, "the knowledge-distillation literature's CIFAR teacher of ResNet-20"), (110, "a deeper CIFAR teacher; the calibration literature's model (Guo et al. 2017)")):
        register(
            ModelSource(
                f"resnet{depth}",
                f"CIFAR ResNet-{depth} (3 stages of {(depth - 2) // 6} basic blocks, widths 16/32/64): {use}",
                lambda num_classes, in_chans, img_size, depth=depth: CifarResNet(num_classes, in_chans, depth=depth),
                paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
            )
        )
    register(
        ModelSource(
            "resnet18",
            "CIFAR ResNet-18 (3x3 stem, no max-pool, 4 stages of 2 basic blocks, widths 64-512)",
            lambda num_classes, in_chans, img_size: CifarResNet18(num_classes, in_chans),
            paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
        )
    )
    register(
        ModelSource(
            "preact_resnet18",
            "CIFAR pre-activation ResNet-18 (the noisy-label literature's model, e.g. DivideMix)",
            lambda num_classes, in_chans, img_size: CifarResNet18(num_classes, in_chans, preact=True),
            paper="He et al., Identity Mappings in Deep Residual Networks, ECCV 2016",
        )
    )
    register(
        ModelSource(
            "fast_cnn_gn",
            "fast_cnn with ReLU then GroupNorm(8) instead of BatchNorm, as DomainBed's MNIST network: the domain-generalisation tiny model",
            lambda num_classes, in_chans, img_size: FastGroupNormCNN(num_classes, in_chans, img_size),
        )
    )
    register(
        ModelSource(
            "mnist_cnn",
            "DomainBed's MNIST_CNN: four 3x3 convolutions (64-128-128-128) with ReLU and GroupNorm(8), 128 pooled features",
            lambda num_classes, in_chans, img_size: MnistCNN(num_classes, in_chans, img_size),
            paper="Gulrajani & Lopez-Paz, In Search of Lost Domain Generalization, ICLR 2021",
        )
    )
