"""The unlearning suite: protocols, metric functions, stored original/retrained models, the
test-free learning-rate selection, and a run end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.catalog import load_catalog
from harness.errors import HarnessError
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
    assert all(dict(s.variant) == {"forget": "class", "access": "full", "pool": 0, "klom_models": 3} for s in specs)
    assert "SalUn" in suite.card and "182 epochs" in suite.card and suite.scales["paper"].model == "resnet18"
    assert all(not suite.metric(m).higher_is_better for m in ("klom_forget", "klom_retain", "klom_val", "params"))


def test_pool_subsample_is_class_balanced_and_refuses_what_the_pool_cannot_give():
    y = torch.arange(1000) % 10
    idx = S.pool_subsample(y, 500, 10, seed=0)
    assert len(idx) == 500 and torch.equal(torch.bincount(y[idx], minlength=10), torch.full((10,), 50))
    assert torch.equal(idx, S.pool_subsample(y, 500, 10, seed=0)) and not torch.equal(idx, S.pool_subsample(y, 500, 10, seed=1))
    with pytest.raises(HarnessError, match="pool=2000"):
        S.pool_subsample(y, 2000, 10, seed=0)


def test_sequential_requests_are_disjoint_single_images_in_a_seeded_order():
    requests = S.sequential_requests(3600, seed=0)
    assert len(requests) == S.SEQUENTIAL_REQUESTS and all(len(r) == S.SEQUENTIAL_REQUEST_SIZE for r in requests)
    flat = torch.cat(requests)
    assert len(set(flat.tolist())) == len(flat)
    mask = S.forget_mask("sequential", torch.zeros(3600, dtype=torch.long), torch.zeros(3600, dtype=torch.bool), 0)
    assert torch.equal(mask.nonzero().squeeze(1), flat.sort().values)


def test_a_restricted_access_hides_inputs_and_refuses_methods_that_read_them():
    from harness_plugins import unlearning as U

    forget, retain = (torch.zeros(2, 1), torch.tensor([0, 1])), (torch.ones(3, 1), torch.tensor([1, 1, 0]))
    assert S.visible("unlabeled_forget", forget, retain) == ((forget[0], None), retain)
    assert S.visible("forget_only", forget, retain) == (forget, None)
    assert S.visible("full", forget, retain) == (forget, retain)
    S.check_access("finetune", U.FineTune(), "unlabeled_forget")
    S.check_access("retrain", U.Retrain(), "forget_only")  # the reference is handed the retrained model
    with pytest.raises(HarnessError, match="ga reads the forget set's labels"):
        S.check_access("ga", U.GradientAscent(), "unlabeled_forget")
    with pytest.raises(HarnessError, match="npo reads the retain set"):
        S.check_access("npo", U.NPO(beta=0.1, retain_weight=1.0), "forget_only")
    S.check_access("npo", U.NPO(beta=0.1, retain_weight=0.0), "forget_only")


def test_changed_fraction_counts_changed_parameter_entries():
    model = torch.nn.Linear(3, 2)  # 8 parameters
    before = S.snapshot(model)
    assert S.changed_fraction(before, model) == 0.0
    with torch.no_grad():
        model.weight[0, :2] += 1.0
    assert S.changed_fraction(before, model) == pytest.approx(2 / 8)
    assert S.changed_fraction(before, torch.nn.Linear(2, 2)) == 1.0  # another model: all of it is new


# ---------------------------------------------------------------------------------------------
# KLoM against hand-computed values
# ---------------------------------------------------------------------------------------------


def test_margin_is_the_true_logit_minus_the_logsumexp_of_the_others():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    expected = [2.0 - math.log(2.0), 1.0 - math.log(math.e**0 + math.e**1)]
    assert S.margins(logits, torch.tensor([0, 2])).tolist() == pytest.approx(expected)
    assert S.margins(torch.tensor([[500.0, 0.0]]), torch.tensor([0])).item() == 100.0  # clipped as the reference code


def test_binned_kl_matches_a_histogram_computed_by_hand():
    # pooled range [0, 4], 4 bins of width 1: p = {0, 1, 1, 2} -> bins 0, 1, 1, 2; q = {1, 2, 3, 4}: the pooled
    # maximum 4 falls past the last edge (np.digitize), so q counts 3 samples: bins 1, 2, 3
    p, q = np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0, 4.0])
    p_prob, q_prob = [1 / 4, 2 / 4, 1 / 4, 0], [0, 1 / 3, 1 / 3, 1 / 3]
    q_safe = [1e-5, 1 / 3, 1 / 3, 1 / 3]  # q's empty bin where p has mass counts as eps
    q_norm = [v / sum(q_safe) for v in q_safe]  # scipy's entropy normalises qk
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p_prob, q_norm) if pi > 0)
    assert S.binned_kl(p, q, bins=4) == pytest.approx(expected, rel=1e-9)
    assert q_prob[0] == 0


def test_klom_of_the_retrained_models_against_themselves_is_zero_for_both_estimators():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(8, 30, generator=g) * 2 + 3
    assert torch.allclose(S.klom_gaussian(reference, reference.clone()), torch.zeros(30, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(S.klom_binned(reference, reference.clone()), torch.zeros(30, dtype=torch.float64), atol=1e-12)
    values, estimator = S.klom(reference, reference)
    assert estimator == "gaussian" and float(values.abs().max()) < 1e-12


def test_klom_of_a_constant_shift_matches_the_closed_form_for_two_gaussians():
    # same spread, means c apart: KL(N(m, s^2) || N(m + c, s^2)) = c^2 / (2 s^2)
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(8, 20, generator=g).double() * 1.5
    shift = 0.7
    s = reference.double().std(0)
    expected = shift**2 / (2 * s**2)
    assert torch.allclose(S.klom_gaussian(reference, reference + shift), expected, rtol=1e-9)
    # and with the histogram estimator (>= 50 models a side): a shift by more than the range gives disjoint bins
    narrow = torch.randn(60, 3, generator=g) * 0.1  # within one bin of the pooled range
    values, estimator = S.klom(narrow, narrow + 50)
    assert estimator == "binned" and torch.allclose(values, torch.full((3,), math.log(1 / 1e-5), dtype=torch.float64), rtol=1e-4)


def test_klom_summary_is_the_95th_percentile_and_the_mean():
    values = torch.arange(101, dtype=torch.float64)
    assert S.klom_summary(values) == (pytest.approx(95.0), pytest.approx(50.0))


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
    _, specs = build_grid(catalog, {"suite": "unlearning", "seeds": "1", "epochs": "1", "klom_models": "0", **overrides})
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
    code, out, err = run_cli("run", "suite=unlearning", "method=retrain,ga,salun", "seeds=1", "epochs=2", "klom_models=0", f"results={tmp_path}")
    assert code == 0, err
    assert "unlearning v3 | scale=tiny | access=full,forget=random10,klom_models=0,pool=0 | mnist5k / small_cnn" in out
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


def test_klom_run_trains_n_originals_and_2n_retrained_models_and_the_reference_sits_at_the_floor(tmp_path):
    code, _out, err = run_cli("run", "suite=unlearning", "method=retrain,ga", "seeds=1", "epochs=1", "klom_models=2", f"results={tmp_path}")
    assert code == 0, err
    records = {r["entry"]: r for r in (json.loads(p.read_text()) for p in tmp_path.glob("runs/*/result.json"))}
    for entry in ("retrain", "ga"):
        metrics, info = records[entry]["metrics"], records[entry]["info"]
        assert info["klom_models"] == 2 and info["klom_estimator"] == "gaussian"
        for group in S.KLOM_GROUPS:
            assert math.isfinite(metrics[f"klom_{group}"]["value"]) and metrics[f"klom_{group}"]["value"] >= 0.0
            assert math.isfinite(info[f"klom_original_{group}"])
    # the reference's unlearned models are independent retrained models: its KLoM is the noise floor, not 0
    assert records["retrain"]["metrics"]["klom_val"]["value"] > 0.0
    assert records["retrain"]["metrics"]["params"]["value"] == pytest.approx(1.0, abs=0.01)
    stored_models = list(Path(os.environ["HARNESS_CACHE"]).glob("artifacts/*.safetensors"))
    assert len(stored_models) == 2 + 4  # n originals and 2n retrained models, shared by both methods


def test_a_method_that_reads_hidden_inputs_is_refused_by_name(tmp_path):
    with pytest.raises(HarnessError, match="ga reads the forget set's labels, which access=unlabeled_forget hides"):
        direct_run(tmp_path, {"method": "ga", "access": "unlabeled_forget"}, {})


def test_sequential_protocol_serves_each_request_from_the_last_model_and_reports_its_cost(tmp_path):
    out = direct_run(tmp_path, {"method": "s3t", "forget": "sequential", "s3t.epochs": "1", "s3t.slices": "2", "s3t.sequences": "2"}, {})
    info, series = out["info"], out["series"]
    assert info["requests"] == S.SEQUENTIAL_REQUESTS and info["forget_size"] == S.SEQUENTIAL_REQUESTS * S.SEQUENTIAL_REQUEST_SIZE
    assert info["owns_training"] and info["setup_seconds"] > 0
    assert len(series["seconds_per_request"]) == len(series["params_per_request"]) == S.SEQUENTIAL_REQUESTS
    # a deletion deactivates layers (no parameter changes) until a shard has none left and is retrained
    assert min(series["params_per_request"]) == 0.0 and out["metrics"]["params"] < 0.5
    finetune = direct_run(tmp_path, {"method": "finetune", "forget": "sequential"}, {})
    assert finetune["metrics"]["params"] > 0.9 and not finetune["info"]["owns_training"]
    with pytest.raises(HarnessError, match="klom_models=0"):
        direct_run(tmp_path, {"method": "finetune", "forget": "sequential", "klom_models": "2"}, {})


def test_the_default_grid_is_the_full_access_methods_and_the_others_run_when_named():
    catalog = load_catalog()
    _, specs = build_grid(catalog, {"suite": "unlearning", "seeds": "1"})
    names = [s.method("unlearning").name for s in specs]
    assert names == ["retrain", "finetune", "ga", "rl", "l1_sparse", "salun", "npo", "scrub", "dmm"]
    assert all(dict(s.variant)["klom_models"] == 3 for s in specs)
    _, named = build_grid(catalog, {"suite": "unlearning", "seeds": "1", "method": "laf,flat,s3t", "klom_models": "0"})
    assert [s.method("unlearning").name for s in named] == ["laf", "flat", "s3t"]
