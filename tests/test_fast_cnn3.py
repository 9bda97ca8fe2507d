"""`fast_cnn3`, the long-tail suite's tiny model: its flattened head follows the input size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.catalog import load_catalog
from harness.models import FastCNN3, get_classifier


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


# side after three 3x3 convolutions of stride 2, padding 1: s -> (s - 1) // 2 + 1, worked by hand
@pytest.mark.parametrize(("chans", "size", "side"), [(1, 28, 4), (1, 8, 1), (3, 32, 4), (1, 15, 2)])
def test_builds_and_runs_at_every_image_size(catalog, chans, size, side):
    model = catalog.model("fast_cnn3").build(10, chans, size)
    head = get_classifier(model)
    assert isinstance(head, nn.Linear) and head.in_features == 64 * side * side and head.out_features == 10
    assert model(torch.zeros(2, chans, size, size)).shape == (2, 10)
    model.eval()
    assert model(torch.randn(1, chans, size, size)).isfinite().all()


def test_parameter_count_on_mnist():
    # convolutions 1*16*9 + 16*32*9 + 32*64*9, BatchNorm 2*(16 + 32 + 64), head 64*4*4*10 + 10
    expected = (144 + 4608 + 18432) + 2 * (16 + 32 + 64) + (1024 * 10 + 10)
    assert sum(p.numel() for p in FastCNN3(10, 1, 28).parameters()) == expected == 33658


def test_the_long_tail_tiny_recipe_trains_it_and_fast_cnn_stays_for_the_others(catalog):
    assert catalog.suites.get("long_tail").scales["tiny"].model == "fast_cnn3"
    assert catalog.suites.get("calibration").scales["tiny"].model == "fast_cnn"  # unchanged: its run ids stay
    pooled = catalog.model("fast_cnn").build(10, 1, 28)
    assert get_classifier(pooled).in_features == 32 * 2 * 2  # fast_cnn still averages its map to 2x2
