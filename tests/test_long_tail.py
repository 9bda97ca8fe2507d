"""The long-tail suite's protocol: the imbalance profile, the subset it keeps, its thresholds."""

from __future__ import annotations

import pytest
import torch

from harness_suites.long_tail import long_tail_counts, long_tail_indices, shot_thresholds


def test_profile_matches_the_ldam_protocol():
    # n_i = floor(400 * 100^(-i/9)): hand-computed for MNIST 5k's 400 training images per class
    counts = long_tail_counts(400, 10, 100)
    assert counts == [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]
    assert sum(counts) == 988
    assert long_tail_counts(5000, 10, 100)[-1] == 50  # CIFAR-10-LT's rarest class
    assert long_tail_counts(400, 10, 1) == [400] * 10


def test_indices_keep_the_first_n_of_each_class_in_source_order():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    keep = long_tail_indices(labels, 2, ratio=4)
    assert keep.tolist() == [0, 2, 4, 6, 1]  # class 0 keeps 4, class 1 keeps 4/4 = 1


@pytest.mark.parametrize(("n_max", "scale", "expected"), [(400, "tiny", (80, 16)), (500, "tiny", (100, 20)), (5000, "paper", (100, 20))])
def test_shot_thresholds_scale_with_the_head_class(n_max, scale, expected):
    assert shot_thresholds(n_max, scale) == pytest.approx(expected)
