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


def test_test_distributions_follow_sades_forward_and_backward_profiles():
    from harness_suites.long_tail import TEST_DISTRIBUTIONS, test_distribution_indices

    labels = torch.arange(10).repeat_interleave(100)  # 100 test images per class
    assert len(test_distribution_indices(labels, 10, "uniform")) == 1000
    forward = torch.bincount(labels[test_distribution_indices(labels, 10, "forward50")], minlength=10).tolist()
    backward = torch.bincount(labels[test_distribution_indices(labels, 10, "backward50")], minlength=10).tolist()
    # n_i = floor(100 * 50^(-i/9)): 100, 64, 41, 27, 17, 11, 7, 4, 3, 2
    assert forward == [100, 64, 41, 27, 17, 11, 7, 4, 3, 2] and backward == forward[::-1]
    assert "forward2" in TEST_DISTRIBUTIONS and "backward50" in TEST_DISTRIBUTIONS and TEST_DISTRIBUTIONS[0] == "uniform"


@pytest.mark.slow
def test_non_uniform_test_distributions_share_one_trained_model(tmp_path, monkeypatch):
    import json

    from harness.testing import offline_environ, run_cli

    for key, value in offline_environ(tmp_path).items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli("run", "suite=long_tail", "method=ce", "test_dist=forward10,backward10,uniform", "seeds=1", "epochs=2", f"results={tmp_path / 'r'}")
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").glob("*/result.json")]
    by_dist = {dict(r["spec"]["variant"])["test_dist"]: r for r in records}
    forward, backward = by_dist["forward10"]["info"], by_dist["backward10"]["info"]
    assert forward["model_artifact"] == backward["model_artifact"] and [forward["model_reused"], backward["model_reused"]].count(True) == 1
    assert forward["test_class_counts"][0] == 100 and backward["test_class_counts"][0] == 10
    assert "test_top1_per_epoch" in by_dist["uniform"]["series"]  # the uniform run trains with its curves
