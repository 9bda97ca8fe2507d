"""The ood suite: detection metrics against hand-computed cases, streams, per-scale corruption lists,
artifact reuse, the released corruption files, far-OOD sets and calibration metrics, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.catalog import load_catalog
from harness.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTIONS
from harness.data import LoadOptions, load_digits
from harness.errors import HarnessError
from harness.metrics import aupr, auroc, detection_metrics, fpr_at_tpr
from harness.spec import build_grid
from harness.testing import run_cli
from harness_suites.ood import SETTINGS, build_stream, domains, released_test_set, stream_corruptions


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v)


def test_auroc_hand_computed():
    # pairs (in, out): 0.9 beats both, 0.8 beats both, 0.4 beats 0.3 only -> 5 of 6
    assert math.isclose(auroc(t(0.9, 0.8, 0.4), t(0.5, 0.3)), 5 / 6)
    # ties count one half: (1,1) tie, (1,0) win, for both in-scores -> (0.5 + 1) * 2 / 4
    assert math.isclose(auroc(t(1, 1), t(1, 0)), 0.75)
    assert auroc(t(3, 4), t(1, 2)) == 1.0 and auroc(t(1, 2), t(3, 4)) == 0.0
    assert math.isnan(auroc(t(), t(1.0)))


def test_fpr_at_95_tpr_hand_computed():
    s_in = torch.arange(1, 21).float()  # 20 in-distribution scores; 95% TPR keeps the top 19 -> threshold 2
    assert math.isclose(fpr_at_tpr(s_in, t(0.5, 1.5, 2.5, 30)), 0.5)  # 2.5 and 30 pass
    assert fpr_at_tpr(s_in, t(0.0, 1.0)) == 0.0
    assert fpr_at_tpr(t(1.0), t(1.0)) == 1.0  # ties at the threshold count as positives


def test_aupr_hand_computed():
    # ranking P(0.9) N(0.8) P(0.7) N(0.1): AP = 0.5 * 1 + 0.5 * 2/3
    assert math.isclose(aupr(t(0.9, 0.7), t(0.8, 0.1)), 0.5 + 0.5 * 2 / 3)
    assert aupr(t(2, 3), t(0, 1)) == 1.0
    # a tie between a positive and a negative is one threshold: precision 1/2 at recall 1
    assert math.isclose(aupr(t(1.0), t(1.0)), 0.5)


def test_detection_metrics_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    s_in, s_out = torch.randn(200, generator=g).round(decimals=1) + 1, torch.randn(150, generator=g).round(decimals=1)
    y = [1] * 200 + [0] * 150
    s = torch.cat([s_in, s_out]).tolist()
    assert math.isclose(auroc(s_in, s_out), metrics.roc_auc_score(y, s), abs_tol=1e-9)
    assert math.isclose(aupr(s_in, s_out), metrics.average_precision_score(y, s), abs_tol=1e-9)
    fpr, tpr, _ = metrics.roc_curve(y, s)
    assert math.isclose(fpr_at_tpr(s_in, s_out), float(fpr[(tpr >= 0.95).argmax()]), abs_tol=1e-9)
    logits_in = torch.tensor([[5.0, 0.0], [4.0, 1.0]])
    logits_out = torch.tensor([[0.5, 0.4], [0.1, 0.0]])
    out = detection_metrics(logits_in, logits_out)
    assert {f"{m}_{s}" for m in ("auroc", "fpr95", "aupr") for s in ("msp", "maxlogit", "energy")} == set(out)
    assert out["auroc_msp"] == 1.0 and out["fpr95_energy"] == 0.0


def test_corruption_lists_per_scale():
    tiny, paper = stream_corruptions("tiny"), stream_corruptions("paper")
    assert tiny == CORRUPTIONS and len(tiny) == 13 and "saturate" in tiny  # version 1's stream: tiny results unchanged
    assert paper == BENCHMARK_CORRUPTIONS and len(paper) == 15  # CIFAR-10-C's 15, in the released order
    assert {"glass_blur", "snow", "frost"} <= set(paper) and "saturate" not in paper
    assert domains(paper)[:6] == (("gaussian_noise", 1), ("gaussian_noise", 2), ("gaussian_noise", 3), ("gaussian_noise", 4), ("gaussian_noise", 5),
                                  ("shot_noise", 1))
    with pytest.raises(HarnessError, match="no corruption list for scale 'huge'"):
        stream_corruptions("huge")
    # the default stream is tiny's: a stream over the tiny list is the stream version 1 built
    labels = torch.arange(6).repeat(9)
    for setting in SETTINGS:
        default, tiny_stream = build_stream(setting, labels, batch_size=16), build_stream(setting, labels, corruptions=tiny, batch_size=16)
        assert [(b.reset, b.domain.tolist(), b.index.tolist(), b.segment) for b in default] == \
               [(b.reset, b.domain.tolist(), b.index.tolist(), b.segment) for b in tiny_stream]


@pytest.mark.parametrize("corruptions", [CORRUPTIONS, BENCHMARK_CORRUPTIONS], ids=["tiny", "paper"])
def test_streams_cover_the_protocol(corruptions):
    labels = torch.arange(10).repeat(7)  # 70 test images, 10 classes
    n = len(labels)
    doms = domains(corruptions)
    for setting in SETTINGS:
        stream = build_stream(setting, labels, corruptions=corruptions, batch_size=16)
        seen = torch.zeros(len(doms))
        for b in stream:
            seen.index_add_(0, b.domain, torch.ones(len(b.index)))
        severities = (5,) if setting.startswith("wild") else (1, 2, 3, 4, 5)
        for i, (_, s) in enumerate(doms):
            expected = 0 if s not in severities else n * (2 if setting == "gradual" and s < 5 else 1)
            assert seen[i] == expected, (setting, doms[i])
    episodic = build_stream("episodic", labels, corruptions=corruptions, batch_size=16)
    assert sum(b.reset for b in episodic) == len(doms)  # reset before every domain
    continual = build_stream("continual", labels, corruptions=corruptions, batch_size=16)
    assert sum(b.reset for b in continual) == 5  # once per severity stream
    assert [doms[int(b.domain[0])][0] for b in continual if b.segment < len(corruptions)][::5] == list(corruptions)
    assert sum(b.reset for b in build_stream("gradual", labels, rounds=2)) == 1
    assert len(build_stream("continual", labels, corruptions=corruptions, rounds=3, batch_size=16)) == 3 * len(continual)
    assert all(len(b.index) == 1 for b in build_stream("wild_bs1", labels, corruptions=corruptions))
    shifted = build_stream("wild_label_shift", labels, corruptions=corruptions, batch_size=16)
    first_domain = torch.cat([labels[b.index] for b in shifted if b.segment == 0])
    assert torch.equal(first_domain, torch.sort(labels).values)  # sorted by class: online label shift
    mixed = build_stream("mixed", labels, corruptions=corruptions, batch_size=16)
    assert any(len(set(b.domain.tolist())) > 1 for b in mixed)  # several corruptions in one batch
    assert [b.index.tolist() for b in build_stream("mixed", labels, corruptions=corruptions)] == \
           [b.index.tolist() for b in build_stream("mixed", labels, corruptions=corruptions)]


def results(tmp: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "runs").glob("*/result.json"))]


def test_end_to_end_source_model_trained_once_and_reused(tmp_path):
    code, out, err = run_cli("run", "suite=ood", "method=source,bn_adapt,tent", "seeds=1", "epochs=2", f"results={tmp_path}")
    assert code == 0, err
    assert "ood v2" in out and "err_s5 ↓" in out and "auroc_msp ↑" in out and "ece ↓" in out
    records = results(tmp_path)
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    info = {r["entry"]: r["info"] for r in records}
    assert set(info) == {"ce+source", "ce+bn_adapt", "ce+tent"}
    assert len({i["artifact_id"] for i in info.values()}) == 1  # one source model
    assert sorted(i["reused"] for i in info.values()) == [False, True, True]  # trained by the first run only
    metrics = {r["entry"]: {k: v["value"] for k, v in r["metrics"].items()} for r in records}
    for m in metrics.values():
        assert 0 <= m["err_s5"] <= 1 and 0 <= m["auroc_msp"] <= 1 and math.isclose(m["gain_s5"], m["source_err_s5"] - m["err_s5"], abs_tol=1e-9)
    assert metrics["ce+source"]["gain_s5"] == 0.0
    # detection and calibration are the source model's, on clean test images: the same for every TTA method
    for name in ("auroc_energy", "clean_acc", "ece", "nll", "brier", "aurc"):
        assert len({m[name] for m in metrics.values()}) == 1, name
    m = metrics["ce+source"]
    assert 0 <= m["ece"] <= 1 and 0 < m["nll"] and 0 <= m["brier"] <= 2 and 0 <= m["aurc"] <= 1
    assert not any(name.endswith("_far") for name in m)  # far_ood=none: no far-OOD metrics
    assert all(r["info"]["corruptions"] == list(CORRUPTIONS) and r["info"]["corrupted"] == "generated" for r in records)
    # at severity 5, test-batch statistics beat the source model (the design measured 0.88 -> 0.28)
    assert metrics["ce+bn_adapt"]["err_s5"] < metrics["ce+source"]["err_s5"]
    grid = next(r for r in records if r["entry"] == "ce+tent")["series"]["err_grid"]
    assert len(grid) == len(CORRUPTIONS) * 5
    # another setting, same source model: loaded, not retrained
    code, _, err = run_cli("run", "suite=ood", "method=sar", "setting=wild_label_shift", "seeds=1", "epochs=2", f"results={tmp_path}")
    assert code == 0, err
    sar = next(r for r in results(tmp_path) if r["entry"] == "ce+sar")
    assert sar["info"]["reused"] is True and sar["info"]["artifact_id"] == next(iter(info.values()))["artifact_id"]
    assert sar["metrics"]["err_all"]["value"] is None  # wild settings evaluate severity 5 only


# ---------------------------------------------------------------------------------------------
# scale=paper: the benchmark's 15 corruptions, generated or read from the released files
# ---------------------------------------------------------------------------------------------

# a paper-scale run with a shrunken recipe (8 x 8 digits, a small CNN, one epoch): the paper's
# corruption list and file path, in seconds on a CPU
SHRUNK = ("scale=paper", "dataset=digits", "model=fast_cnn", "epochs=1", "batch_size=64", "warmup_epochs=0", "seeds=1")


def test_paper_scale_streams_cifar10c_15_corruptions(tmp_path):
    code, _, err = run_cli("run", "suite=ood", "method=source", *SHRUNK, f"results={tmp_path}")
    assert code == 0, err
    (record,) = results(tmp_path)
    assert record["status"] == "ok", record["error"]
    assert record["info"]["corruptions"] == list(BENCHMARK_CORRUPTIONS) and record["info"]["corrupted"] == "generated"
    assert len(record["series"]["err_grid"]) == 15 * 5 and len(record["series"]["err_s5_per_corruption"]) == 15


def write_released(root: Path, images: np.ndarray, labels: np.ndarray, corruptions=BENCHMARK_CORRUPTIONS, altered: str = "gaussian_noise") -> None:
    """CIFAR-10-C's layout: <corruption>.npy uint8 [5 N, H, W, C] (severities 1..5 in order) and
    labels.npy [5 N]. Every corruption holds the given images at every severity, except `altered`,
    which holds their negatives."""
    root.mkdir(parents=True, exist_ok=True)
    hwc = images.transpose(0, 2, 3, 1)
    for c in corruptions:
        np.save(root / f"{c}.npy", np.tile(255 - hwc if c == altered else hwc, (5, 1, 1, 1)))
    np.save(root / "labels.npy", np.tile(labels, 5))


def digits_test_split(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits(LoadOptions(cache_dir=tmp_path / "cache"))
    return data.test_x.numpy(), data.test_y.numpy()


def test_released_files_are_read_in_the_files_order_with_their_labels(tmp_path):
    x, y = digits_test_split(tmp_path)
    perm = np.random.default_rng(0).permutation(len(y))  # the files' order differs from the loader's
    write_released(tmp_path / "CIFAR-10-C", x[perm], y[perm])
    code, _, err = run_cli("run", "suite=ood", "method=source", *SHRUNK, "corrupted=released", f"corrupted_dir={tmp_path / 'CIFAR-10-C'}",
                           f"results={tmp_path / 'results'}")
    assert code == 0, err
    (record,) = results(tmp_path / "results")
    assert record["status"] == "ok", record["error"]
    info, metrics = record["info"], {k: v["value"] for k, v in record["metrics"].items()}
    assert info["corrupted"] == "released" and info["released_benchmark"] == "CIFAR-10-C" and info["released_order_is_test_order"] is False
    assert info["corruptions"] == list(BENCHMARK_CORRUPTIONS) and info["n_test_in"] == int((y < 6).sum())  # classes 6-9 of the files dropped
    grid = torch.tensor(record["series"]["source_err_grid"]).view(15, 5)
    # every corruption but gaussian_noise holds the clean test images (in another order, with their own
    # labels): the unadapted source model's error there is its clean error (up to one image of float noise)
    clean = grid[1:]
    assert (clean - (1 - metrics["clean_acc"])).abs().max() <= 1.5 / info["n_test_in"]
    noise = grid[0]
    assert torch.equal(noise, noise[:1].expand(5))  # the same (negative) images at every severity
    assert (noise - clean[0]).abs().min() > 1.5 / info["n_test_in"]  # read from its own file


def test_released_files_missing_or_mismatched_fail_in_one_line_before_training(tmp_path):
    missing = tmp_path / "nowhere"
    code, _, err = run_cli("run", "suite=ood", "method=source", *SHRUNK, "corrupted=released", f"corrupted_dir={missing}", f"results={tmp_path / 'r'}")
    message = err.strip().splitlines()[-1]  # the lines before it announce the grid
    assert code == 2 and message.startswith(f"harness: error: corrupted=released needs CIFAR-10-C ({missing} is not a directory)")
    assert "corrupted_dir=PATH" in message and "epoch" not in err and not list((tmp_path / "r").glob("runs/*/result.json"))
    # the default folder is the documented cache location
    code, _, err = run_cli("run", "suite=ood", "method=source", *SHRUNK, "corrupted=released", f"results={tmp_path / 'r'}")
    assert code == 2 and "harness-cache/datasets/CIFAR-10-C is not a directory" in err
    code, _, err = run_cli("run", "suite=ood", "method=source", "seeds=1", "corrupted=released", f"results={tmp_path / 'r'}")
    assert code == 2 and "at scale=paper" in err  # tiny (MNIST) has no released copy
    code, _, err = run_cli("run", "suite=ood", "method=source", *SHRUNK, f"corrupted_dir={missing}", f"results={tmp_path / 'r'}")
    assert code == 2 and "corrupted_dir= applies to corrupted=released only" in err

    x, y = digits_test_split(tmp_path)
    write_released(tmp_path / "partial", x, y, corruptions=BENCHMARK_CORRUPTIONS[:-2])
    with pytest.raises(HarnessError, match=r"missing in .*partial: pixelate\.npy, jpeg_compression\.npy"):
        released_test_set(tmp_path / "partial", "CIFAR-10-C", BENCHMARK_CORRUPTIONS, 6, torch.from_numpy(x[y < 6]), torch.from_numpy(y[y < 6]))
    write_released(tmp_path / "other", x[y != 0], y[y != 0])  # not this test split: class 0 is missing
    with pytest.raises(HarnessError, match=r"per class \[0, .*the files must be the corrupted copies of this data set's test split"):
        released_test_set(tmp_path / "other", "CIFAR-10-C", BENCHMARK_CORRUPTIONS, 6, torch.from_numpy(x[y < 6]), torch.from_numpy(y[y < 6]))


# ---------------------------------------------------------------------------------------------
# far-OOD sets
# ---------------------------------------------------------------------------------------------


def test_far_ood_metrics_on_a_local_folder(tmp_path):
    from PIL import Image

    x, y = digits_test_split(tmp_path)
    folder = tmp_path / "far" / "nested"
    folder.mkdir(parents=True)
    in_dist = x[y < 6][:, 0]
    for i, img in enumerate(in_dist):  # the far set is a copy of the in-distribution test images
        Image.fromarray(img, mode="L").save(folder / f"{i:04d}.png")
    code, _, err = run_cli("run", "suite=ood", "method=source", "dataset=digits", "model=fast_cnn", "epochs=1", "batch_size=64", "warmup_epochs=0",
                           "seeds=1", f"far_ood=folder:{tmp_path / 'far'}", f"results={tmp_path / 'r'}")
    assert code == 0, err
    (record,) = results(tmp_path / "r")
    metrics = {k: v["value"] for k, v in record["metrics"].items()}
    n = len(in_dist)
    assert record["info"]["far_ood"] == f"folder:{tmp_path / 'far'}" and record["info"]["n_far_ood"] == n
    for score in ("msp", "maxlogit", "energy"):
        # the same images on both sides: every score is tied pairwise, so AUROC = 1/2 and AP = 1/2
        # (the n pairs of an image with itself may break their tie by float noise: at most 1/(2n))
        assert abs(metrics[f"auroc_{score}_far"] - 0.5) <= 0.5 / n + 1e-9
        assert abs(metrics[f"aupr_{score}_far"] - 0.5) < 0.05
        assert metrics[f"fpr95_{score}_far"] >= 0.94
        assert abs(metrics[f"auroc_{score}"] - 0.5) > 0.5 / n  # the held-out digits (near-OOD) are scored apart from the far set
    code, _, err = run_cli("run", "suite=ood", "method=source", "dataset=digits", "seeds=1", "far_ood=nosuch", f"results={tmp_path / 'r2'}")
    assert code == 2 and "unknown far-OOD set 'nosuch'" in err and "svhn" in err
    assert not list((tmp_path / "r2").glob("runs/*/result.json"))


# ---------------------------------------------------------------------------------------------
# the default grid
# ---------------------------------------------------------------------------------------------


def test_cotta_is_out_of_the_default_grid_but_runs_when_named(tmp_path):
    catalog = load_catalog()
    _, specs = build_grid(catalog, {"suite": "ood"})
    entries = {s.entry for s in specs}
    assert "ce+cotta" not in entries and {"ce+source", "ce+tent", "ce+bn_adapt", "ce+sar", "ce+eata", "ce+rmt"} <= entries
    cotta = catalog.methods.get("cotta")
    assert cotta.default_grid is False and "9 minutes" in cotta.default_grid_note and "method=cotta" in cotta.default_grid_note
    _, named = build_grid(catalog, {"suite": "ood", "method": "cotta"})
    assert {s.entry for s in named} == {"ce+cotta"}
    code, out, _ = run_cli("list", "methods", "cotta", "format=json")
    assert code == 0 and "not in default grids: about 9 minutes a run" in out
    code, _, err = run_cli("run", "suite=ood", "method=cotta", "dataset=digits", "model=fast_cnn", "epochs=1", "batch_size=64", "warmup_epochs=0",
                           "seeds=1", "setting=wild_label_shift", "cotta.n_aug=2", f"results={tmp_path}")
    assert code == 0, err
    (record,) = results(tmp_path)
    assert record["status"] == "ok" and record["entry"] == "ce+cotta[n_aug=2]" and 0 <= record["metrics"]["err_s5"]["value"] <= 1
