"""The unlearning suite: protocols, metric functions, stored original/retrained models, the
test-free learning-rate selection, and a run end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

from harness.catalog import load_catalog
from harness.spec import build_grid
from harness.suite import RunContext
from harness.testing import run_cli
from harness_suites import unlearning as S

# ---------------------------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------------------------


def test_the_noisy_protocol_uses_the_shared_symmetric_noise_with_its_own_stream():
    # one label-noise function for every suite (harness.label_noise), drawn from a stream of the
    # unlearning suite's own, so its noise is not the noisy-labels suite's draw for the same seed
    from harness.label_noise import noise_rng, symmetric_noise

    y = torch.arange(1000) % 10
    noisy = symmetric_noise(y, 10, 0.3, noise_rng(0, "unlearning/noise"))
    flipped = noisy != y
    assert int(flipped.sum()) == 300
    assert torch.equal(noisy, symmetric_noise(y, 10, 0.3, noise_rng(0, "unlearning/noise")))
    assert not torch.equal(noisy, symmetric_noise(y, 10, 0.3, noise_rng(0)))

def test_forget_sets_of_each_protocol():
    y = torch.arange(1000) % 10
    flipped = torch.zeros(1000, dtype=torch.bool)
    flipped[::7] = True
    for name, size in (("random1", 10), ("random10", 100), ("random50", 500)):
        assert int(S.forget_mask(name, y, flipped, 0).sum()) == size
    assert torch.equal(S.forget_mask("class", y, flipped, 0), y == S.FORGET_CLASS)
    assert torch.equal(S.forget_mask("noisy", y, flipped, 0), flipped)
    pool, val = S.holdout_split(4000, 0.1, seed=0)
    assert len(val) == 400 and len(pool) == 3600 and not set(pool.tolist()) & set(val.tolist())


def test_cli_cell_grid_parses_forget_axis_and_methods():
    suite, specs = build_grid(load_catalog(), {"suite": "unlearning", "forget": "class", "method": "salun,ga", "seeds": "1"})
    assert suite.primary == "gap" and not suite.metric("gap").higher_is_better
    assert [s.method("unlearning").name for s in specs] == ["salun", "ga"]
    assert all(dict(s.variant) == {"forget": "class"} for s in specs)
    assert "SalUn" in suite.card and "182 epochs" in suite.card and suite.scales["paper"].model == "resnet18"


# ---------------------------------------------------------------------------------------------
# metrics against hand-computed values
# ---------------------------------------------------------------------------------------------


def onehot_logits(pred: list[int], k: int = 3, scale: float = 10.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), k).float() * scale


def test_ua_ra_ta_and_mia_on_a_constructed_case():
    y = {"forget": torch.tensor([0, 1, 2, 0]), "retain": torch.tensor([0, 1, 2, 0, 1, 2]), "test": torch.tensor([0, 1, 2, 1])}
    logits = {
        "forget": onehot_logits([0, 2, 1, 1], scale=0.1),  # 1 of 4 right, low confidence -> UA = 0.75
        "retain": onehot_logits([0, 1, 2, 0, 1, 0]),  # 5 of 6 right
        "test": onehot_logits([0, 1, 0, 0], scale=0.1),  # 2 of 4 right
    }
    s = S.unlearning_scores(logits, y, "test", torch.arange(4))
    assert s["ua"] == pytest.approx(0.75) and s["ra"] == pytest.approx(5 / 6) and s["ta"] == pytest.approx(0.5)
    # members are the confident retain rows (conf ~1), non-members are near-uniform (conf ~1/3 or lower):
    # every forget sample (conf <= 0.37) is called a non-member
    assert s["mia"] == pytest.approx(1.0)


def test_mia_efficacy_separates_members_from_non_members():
    g = torch.Generator().manual_seed(0)
    k = 4
    y = torch.zeros(200, dtype=torch.long)

    def with_conf(conf: torch.Tensor) -> torch.Tensor:  # logits whose softmax gives p(class 0) = conf
        rest = (1 - conf) / (k - 1)
        return torch.stack([conf.log()] + [rest.log()] * (k - 1), 1)

    members = with_conf(0.95 + 0.04 * torch.rand(200, generator=g))
    non = with_conf(0.3 + 0.3 * torch.rand(200, generator=g))
    target = torch.cat([with_conf(torch.full((30,), 0.98)), with_conf(torch.full((10,), 0.4))])
    assert S.mia_efficacy((members, y), (non, y), (target, y[:40])) == pytest.approx(10 / 40)


def test_average_gap_and_kl():
    m = {"ua": 0.10, "ra": 0.95, "ta": 0.90, "mia": 0.20}
    r = {"ua": 0.15, "ra": 0.97, "ta": 0.88, "mia": 0.10}
    assert S.average_gap(m, r) == pytest.approx((0.05 + 0.02 + 0.02 + 0.10) / 4)
    assert S.average_gap(r, r) == 0.0
    p_ref, p = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert S.kl_to_reference(p_ref.log(), p.log()) == pytest.approx(expected, rel=1e-5)
    assert S.kl_to_reference(p.log(), p.log()) == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------


def direct_run(tmp_path: Path, overrides: dict[str, str], data_memo: dict) -> dict:
    catalog = load_catalog()
    _, specs = build_grid(catalog, {"suite": "unlearning", "seeds": "1", "epochs": "1", **overrides})
    ctx = RunContext(spec=specs[0], catalog=catalog, cache_dir=tmp_path / "cache", device="cpu", data_memo=data_memo)
    out = S.run(ctx)
    return {"metrics": out.metrics, "info": out.info, "series": out.series}


def test_lr_selection_never_touches_the_test_split(tmp_path):
    first = direct_run(tmp_path, {"method": "ga"}, {})
    clean = load_catalog()  # same data, test split replaced by garbage
    from harness.data import LoadOptions

    data = clean.dataset("mnist5k").load(LoadOptions(cache_dir=tmp_path / "datasets"))
    g = torch.Generator().manual_seed(123)
    garbage = dataclasses.replace(
        data, test_x=torch.randint(0, 256, data.test_x.shape, dtype=torch.uint8, generator=g), test_y=torch.randint(0, 10, data.test_y.shape, generator=g)
    )
    second = direct_run(tmp_path, {"method": "ga"}, {"mnist5k": garbage})
    assert second["info"]["original"]["reused"] and second["info"]["retrained"]["reused"]
    assert second["info"]["lr_selected"] == first["info"]["lr_selected"]
    def scores(run):  # every candidate's validation scores (the timings differ, of course)
        return [{k: v for k, v in t.items() if k != "seconds"} for t in run["info"]["lr_search"]]

    assert scores(second) == scores(first)
    assert len(first["info"]["lr_candidates"]) == 3 and second["metrics"]["ta"] != first["metrics"]["ta"]


def test_noisy_protocol_forgets_the_mislabelled_subset(tmp_path):
    out = direct_run(tmp_path, {"method": "finetune", "forget": "noisy"}, {})
    info = out["info"]
    assert info["forget_size"] == round(S.NOISE_RATE * 3600) and info["noise_rate"] == S.NOISE_RATE
    assert info["retain_size"] == 3600 - info["forget_size"]
    # the forget set carries its wrong labels: the retrained model, which never saw them, mostly disagrees
    assert info["retrained"]["test_ua"] > 0.5 and 0.0 <= out["metrics"]["gap"] <= 1.0


def test_cli_end_to_end_ranks_methods_and_reuses_the_stored_models(tmp_path):
    code, out, err = run_cli("run", "suite=unlearning", "method=retrain,ga,salun", "seeds=1", "epochs=2", f"results={tmp_path}")
    assert code == 0, err
    assert "unlearning v2 | scale=tiny | forget=random10 | mnist5k / small_cnn" in out
    assert "gap ↓" in out and "ua ↑" in out and "mia ↑" in out and "rte ↓" in out
    records = {r["entry"]: r for r in (json.loads(p.read_text()) for p in tmp_path.glob("runs/*/result.json"))}
    assert set(records) == {"retrain", "ga", "salun"} and all(r["status"] == "ok" for r in records.values())
    ref = records["retrain"]
    assert ref["metrics"]["gap"]["value"] == 0.0 and ref["metrics"]["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    infos = [records[e]["info"] for e in ("retrain", "ga", "salun")]
    assert not infos[0]["original"]["reused"] and not infos[0]["retrained"]["reused"]  # trained by the first run ...
    for info in infos[1:]:  # ... and reused by every later one
        assert info["original"]["reused"] and info["retrained"]["reused"]
        assert info["original"]["artifact_id"] == infos[0]["original"]["artifact_id"]
        assert info["retrained"]["artifact_id"] == infos[0]["retrained"]["artifact_id"]
        assert len(info["lr_candidates"]) == 3 and info["lr_selected"] in info["lr_candidates"]
    stored_models = list(Path(os.environ["HARNESS_CACHE"]).glob("artifacts/*.safetensors"))
    assert len(stored_models) == 2  # one original, one retrained model for the three methods
