"""The noisy-label suite's protocol: noise models, transition matrix, metrics, validation, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.testing import run_cli
from harness_suites import noisy_labels as N

K = 10
CLEAN = torch.arange(4000) % K  # balanced: 400 per class
DIGITS = tuple(str(i) for i in range(K))


def variant(**kw):
    return {"noise": "sym", "rate": 0.5, "human": "none", "noise_file": "none", **kw}


def test_symmetric_noise_realises_the_rate_and_always_changes_the_label():
    for rate in (0.2, 0.5, 0.8):
        noisy = N.symmetric_noise(CLEAN, K, rate, N.noise_rng(0))
        flipped = noisy != CLEAN
        assert flipped.sum().item() == round(rate * len(CLEAN))  # exact, so never equal to the clean label
        assert noisy.min() >= 0 and noisy.max() < K
    noisy = N.symmetric_noise(CLEAN, K, 0.8, N.noise_rng(1))
    wrong = noisy != CLEAN
    offsets = ((noisy[wrong] - CLEAN[wrong]) % K).tolist()
    assert set(offsets) == set(range(1, K))  # uniform over the OTHER classes: every offset occurs, 0 never
    counts = np.bincount(offsets, minlength=K)[1:]
    assert counts.min() > 0.7 * counts.mean()


def test_asymmetric_noise_flips_only_along_the_listed_pairs():
    pairs, source = N.asym_pairs(DIGITS, "mnist5k")
    assert sorted(pairs) == [(2, 7), (3, 8), (5, 6), (6, 5), (7, 1)]
    assert "MNIST" in source
    noisy = N.asymmetric_noise(CLEAN, pairs, 0.4, N.noise_rng(0))
    changed = {(int(a), int(b)) for a, b in zip(CLEAN[noisy != CLEAN], noisy[noisy != CLEAN], strict=True)}
    assert changed == set(pairs)
    for a, _ in pairs:
        assert (noisy[CLEAN == a] != a).sum().item() == round(0.4 * 400)
    assert (noisy != CLEAN).float().mean().item() == pytest.approx(0.4 * 5 / 10)


def test_asymmetric_pairs_by_class_names_and_fallback():
    pairs, _ = N.asym_pairs(N.CIFAR10_CLASSES, "cifar10")
    names = N.CIFAR10_CLASSES
    assert {(names[a], names[b]) for a, b in pairs} == {("truck", "automobile"), ("bird", "airplane"), ("deer", "horse"), ("cat", "dog"), ("dog", "cat")}
    pairs, source = N.asym_pairs(tuple(f"c{i}" for i in range(5)), "parquet:/data")
    assert pairs == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)] and "(i + 1) mod 5" in source
    pairs, _ = N.asym_pairs(tuple(f"f{i}" for i in range(100)), "cifar100")
    assert pairs[:5] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)] and pairs[99] == (99, 95)


def test_instance_noise_mean_rate_and_reproducibility():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4000, 1, 8, 8), dtype=torch.uint8, generator=gen)
    for rate in (0.2, 0.4):
        noisy = N.instance_noise(CLEAN, x, K, rate, N.noise_rng(0))
        assert (noisy != CLEAN).float().mean().item() == pytest.approx(rate, abs=0.03)
        assert noisy.min() >= 0 and noisy.max() < K
    assert torch.equal(N.instance_noise(CLEAN, x, K, 0.4, N.noise_rng(3)), N.instance_noise(CLEAN, x, K, 0.4, N.noise_rng(3)))


@pytest.mark.parametrize("noise", ["sym", "asym", "instance"])
def test_same_seed_same_noisy_labels_different_seeds_differ(noise):
    x = torch.randint(0, 256, (4000, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a, _ = N.make_noisy_labels(variant(noise=noise, rate=0.4), CLEAN, x, DIGITS, "mnist5k", seed=0)
    b, _ = N.make_noisy_labels(variant(noise=noise, rate=0.4), CLEAN, x, DIGITS, "mnist5k", seed=0)
    c, _ = N.make_noisy_labels(variant(noise=noise, rate=0.4), CLEAN, x, DIGITS, "mnist5k", seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(123)  # the training RNG does not enter the noise draw
    d, _ = N.make_noisy_labels(variant(noise=noise, rate=0.4), CLEAN, x, DIGITS, "mnist5k", seed=0)
    assert torch.equal(a, d)


def test_transition_matrix_rows_and_off_diagonal_mass():
    noisy = N.symmetric_noise(CLEAN, K, 0.5, N.noise_rng(0))
    t = N.transition_matrix(CLEAN, noisy, K)
    assert t.shape == (K, K)
    assert torch.allclose(t.sum(dim=1), torch.ones(K, dtype=torch.float64))
    realised = (noisy != CLEAN).double().mean().item()
    prior = torch.bincount(CLEAN, minlength=K).double() / len(CLEAN)
    assert float((prior * (1 - t.diagonal())).sum()) == pytest.approx(realised, abs=1e-12)
    # hand-made: 2 classes, class 0 has 3 samples of which 1 flips, class 2 is absent
    small = N.transition_matrix(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 0, 1]), 3)
    assert torch.allclose(small, torch.tensor([[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64))


def test_memorisation_metric_on_a_hand_made_example():
    clean = torch.tensor([0, 1, 2, 3, 4, 5])
    noisy = torch.tensor([0, 2, 2, 0, 1, 5])  # samples 1, 3, 4 are corrupted
    pred = torch.tensor([9, 2, 9, 3, 7, 9])  # 1 predicts its noisy label, 3 its clean label, 4 neither
    memorised, recovered = N.noisy_sample_fit(pred, clean, noisy)
    assert memorised == pytest.approx(1 / 3) and recovered == pytest.approx(1 / 3)
    assert all(np.isnan(v) for v in N.noisy_sample_fit(pred, clean, clean))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"rate": 1.0}, r"\[0, 1\)"),
        ({"noise": "asym", "rate": 0.6}, "asym"),
        ({"noise": "sym", "human": "worst"}, "noise=human only"),
        ({"noise": "human", "human": "none"}, "human=LABELSET"),
        ({"noise": "human", "human": "worst"}, "noise_file"),
        ({"noise": "human", "human": "noisy100", "noise_file": "/x.json"}, "CIFAR-100"),
        ({"noise": "human", "human": "worst", "rate": 0.2}, "rate does not apply"),
    ],
)
def test_invalid_combinations_are_clear_errors(kw, message):
    with pytest.raises(HarnessError, match=message):
        N.make_noisy_labels(variant(**kw), CLEAN, torch.zeros(4000, 1, 2, 2, dtype=torch.uint8), DIGITS, "mnist5k", seed=0)


def test_human_labels_from_json_npy_and_csv(tmp_path):
    clean = torch.tensor([0, 1, 2, 3] * 3)
    worst = [1, 1, 2, 0] * 3
    (tmp_path / "n.json").write_text(json.dumps({"clean_label": clean.tolist(), "worse_label": worst, "aggre_label": clean.tolist()}))
    noisy, info = N.make_noisy_labels(variant(noise="human", human="worst", noise_file=str(tmp_path / "n.json")), clean, torch.zeros(12, 1, 2, 2, dtype=torch.uint8), DIGITS, "cifar10", seed=0)
    assert noisy.tolist() == worst and len(info["noise_file_sha256"]) == 64
    np.save(tmp_path / "n.npy", np.asarray(worst))
    assert N.human_noise(clean, K, "rand1", str(tmp_path / "n.npy"))[0].tolist() == worst
    (tmp_path / "n.csv").write_text("random_label1,clean_label\n" + "\n".join(f"{w},{c}" for w, c in zip(worst, clean.tolist(), strict=True)) + "\n")
    assert N.human_noise(clean, K, "rand1", str(tmp_path / "n.csv"))[0].tolist() == worst
    (tmp_path / "bad.json").write_text(json.dumps({"clean_label": [3] * 12, "worse_label": worst}))
    with pytest.raises(HarnessError, match="does not match"):
        N.human_noise(clean, K, "worst", str(tmp_path / "bad.json"))
    with pytest.raises(HarnessError, match="has 12 labels"):
        N.human_noise(torch.zeros(5, dtype=torch.int64), K, "worst", str(tmp_path / "n.json"))
    with pytest.raises(HarnessError, match="does not exist"):
        N.human_noise(clean, K, "worst", str(tmp_path / "missing.json"))
    (tmp_path / "labels.pt").write_bytes(b"\x80\x02")  # a truncated pickle: refused with a message
    with pytest.raises(HarnessError, match=r"labels\.pt"):
        N.human_noise(clean, K, "worst", str(tmp_path / "labels.pt"))


def test_human_labels_from_the_published_torch_file(tmp_path):
    # the published CIFAR-10_human.pt is a torch-saved dict of numpy arrays: read as data, never executed
    clean = torch.tensor([0, 1, 2, 3] * 3)
    worst = np.asarray([1, 1, 2, 0] * 3)
    torch.save({"clean_label": clean.numpy(), "worse_label": worst, "aggre_label": clean.numpy()}, tmp_path / "CIFAR-10_human.pt")
    noisy, digest = N.human_noise(clean, K, "worst", str(tmp_path / "CIFAR-10_human.pt"))
    assert noisy.tolist() == worst.tolist() and len(digest) == 64


def test_the_tiny_model_fits_any_image_size_and_can_memorise():
    from harness.catalog import load_catalog
    from harness.models import FastCNN

    catalog = load_catalog()
    suite = catalog.suites.get("noisy_labels")
    assert suite.scales["tiny"].model == "fast_cnn_fc"
    for chans, size in ((1, 28), (3, 32), (1, 15)):  # the flattened size follows the strided maps
        model = catalog.model("fast_cnn_fc").build(10, chans, size)
        assert model(torch.zeros(2, chans, size, size)).shape == (2, 10)
    # random labels: the fully connected head fits all of them; fast_cnn's globally pooled head,
    # which lacks the capacity to memorise, does not (the reason the suite cannot use it)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1024, 1, 16, 16, generator=gen), torch.randint(0, K, (1024,), generator=gen)

    def fit(model: torch.nn.Module) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(80):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            return float((model.eval()(x).argmax(1) == y).float().mean())

    torch.manual_seed(0)
    assert fit(N.FastCNNFC(K, 1, 16)) == 1.0
    torch.manual_seed(0)
    assert fit(FastCNN(K, 1, 16)) < 0.95


def test_the_default_grid_leaves_out_the_listed_entries_and_says_so():
    from harness.catalog import load_catalog
    from harness.spec import build_grid, default_entries

    catalog = load_catalog()
    suite = catalog.suites.get("noisy_labels")
    entries = default_entries(catalog, suite)
    installed = set(catalog.methods.names())
    assert set(N.OFF_DEFAULT_GRID) <= installed  # each left-out name is a real method, one method= away
    assert not set(entries) & set(N.OFF_DEFAULT_GRID)
    assert {"ce", "gce", "nce_rce", "elr", "mae", "mixup", "coteaching"} <= set(entries)
    assert all(name in suite.summary for name in N.OFF_DEFAULT_GRID)  # what `harness list suites` shows
    _, specs = build_grid(catalog, {"suite": "noisy_labels", "method": "ce,sla,class_balanced", "seeds": "1"})
    assert len(specs) == 3


def test_end_to_end_tiny_run(tmp_path):
    code, out, err = run_cli("run", "suite=noisy_labels", "method=ce,gce", "seeds=1", "epochs=2", f"results={tmp_path}")
    assert code == 0, err
    assert "noisy_labels" in out and "clean_top1" in out and "memorisation" in out
    assert " ce " in out and " gce " in out
    records = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/result.json")]
    assert sorted(r["entry"] for r in records) == ["ce", "gce"]
    labels = []
    for r in records:
        assert r["status"] == "ok", r["error"]
        info, series = r["info"], r["series"]
        assert info["num_classes"] == 10 and info["noise"] == "sym"
        assert info["realised_noise_rate"] == pytest.approx(0.5)
        assert len(series["transition_matrix"]) == 100
        rows = np.asarray(series["transition_matrix"]).reshape(10, 10)
        assert np.allclose(rows.sum(axis=1), 1.0)
        assert len(series["clean_top1_per_epoch"]) == 2 and len(series["memorisation_per_epoch"]) == 2
        assert 0.0 <= r["metrics"]["memorisation"]["value"] <= 1.0
        assert r["metrics"]["memorisation"]["higher_is_better"] is False
        labels.append(series["transition_matrix"])
    assert labels[0] == labels[1]  # both methods trained on the same noisy labels
