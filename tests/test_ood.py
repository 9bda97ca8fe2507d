"""The ood suite: detection metrics against hand-computed cases, streams, artifact reuse, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.metrics import aupr, auroc, detection_metrics, fpr_at_tpr
from harness.testing import run_cli
from harness_suites.ood import CORRUPTIONS, DOMAINS, SETTINGS, build_stream


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


def test_streams_cover_the_protocol():
    labels = torch.arange(10).repeat(7)  # 70 test images, 10 classes
    n = len(labels)
    for setting in SETTINGS:
        stream = build_stream(setting, labels, batch_size=16)
        seen = torch.zeros(len(DOMAINS))
        for b in stream:
            seen.index_add_(0, b.domain, torch.ones(len(b.index)))
        severities = (5,) if setting.startswith("wild") else (1, 2, 3, 4, 5)
        for i, (_, s) in enumerate(DOMAINS):
            expected = 0 if s not in severities else n * (2 if setting == "gradual" and s < 5 else 1)
            assert seen[i] == expected, (setting, DOMAINS[i])
    episodic = build_stream("episodic", labels, batch_size=16)
    assert sum(b.reset for b in episodic) == len(DOMAINS)  # reset before every domain
    continual = build_stream("continual", labels, batch_size=16)
    assert sum(b.reset for b in continual) == 5  # once per severity stream
    assert [DOMAINS[int(b.domain[0])][0] for b in continual if b.segment < len(CORRUPTIONS)][::5][:3] == list(CORRUPTIONS[:3])
    assert sum(b.reset for b in build_stream("gradual", labels, rounds=2)) == 1
    assert len(build_stream("continual", labels, rounds=3, batch_size=16)) == 3 * len(continual)
    assert all(len(b.index) == 1 for b in build_stream("wild_bs1", labels))
    shifted = build_stream("wild_label_shift", labels, batch_size=16)
    first_domain = torch.cat([labels[b.index] for b in shifted if b.segment == 0])
    assert torch.equal(first_domain, torch.sort(labels).values)  # sorted by class: online label shift
    mixed = build_stream("mixed", labels, batch_size=16)
    assert any(len(set(b.domain.tolist())) > 1 for b in mixed)  # several corruptions in one batch
    assert [b.index.tolist() for b in build_stream("mixed", labels)] == [b.index.tolist() for b in build_stream("mixed", labels)]


def results(tmp: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "runs").glob("*/result.json"))]


def test_end_to_end_source_model_trained_once_and_reused(tmp_path):
    code, out, err = run_cli("run", "suite=ood", "method=source,bn_adapt,tent", "seeds=1", "epochs=2", f"results={tmp_path}")
    assert code == 0, err
    assert "ood v1" in out and "err_s5 ↓" in out and "auroc_msp ↑" in out
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
    assert len({m["auroc_energy"] for m in metrics.values()}) == 1  # detection is the source model's
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
