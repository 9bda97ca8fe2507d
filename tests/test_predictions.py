"""Per-sample predictions: stored compactly and checked when read back; McNemar's test, the seed
disagreement and `harness rescore` computed from them, against values worked out by hand."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats as scipy_stats

from harness import metrics
from harness.errors import HarnessError
from harness.leaderboard import build_boards
from harness.predictions import BadPredictions, Predictions, decode, encode, rescore
from harness.store import ResultStore
from harness.testing import fake_record, run_cli

LT = {"version": "3", "variant": {"ratio": 100, "test_dist": "uniform"}}
LABELS = torch.arange(20) % 4


def logits_for(pred: list[int]) -> torch.Tensor:
    """Logits whose argmax is `pred`, with graded confidences."""
    z = torch.zeros(len(pred), 4)
    for i, p in enumerate(pred):
        z[i, p] = 1.0 + 0.1 * (i % 7)
    return z


def store_run(store, entry, seed, pred, *, scores=True):
    logits = logits_for(pred)
    record = fake_record(entry=entry, seed=seed, value=metrics.accuracy(logits, LABELS), extra={"ece": metrics.expected_calibration_error(logits, LABELS)}, **LT)
    mapping = {"top1": "accuracy", "ece": "ece"} if scores else {}
    summary, data = encode({"test": Predictions(logits, LABELS, scores=mapping)})
    store.write({**record, "predictions": summary}, predictions=data)
    return record


def test_predictions_round_trip_and_recompute_the_scores_exactly():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(1))
    summary, data = encode({"test": (logits, labels)})
    cols = decode(data, summary)["test"]
    assert summary["num_classes"] == 7 and summary["probabilities"] and summary["splits"]["test"]["rows"] == 50
    assert (cols["pred"] == logits.argmax(1).numpy()).all() and (cols["label"] == labels.numpy()).all()
    from harness.predictions import score

    args = {c: cols[c] for c in ("label", "pred", "confidence", "nll", "brier")}
    assert score("accuracy", **args) == pytest.approx(metrics.accuracy(logits, labels), abs=1e-7)  # float32 there
    assert score("ece", **args) == metrics.expected_calibration_error(logits, labels)  # the same float32 operations
    assert score("nll", **args) == pytest.approx(metrics.negative_log_likelihood(logits, labels), rel=1e-6)
    assert score("brier", **args) == pytest.approx(metrics.brier_score(logits, labels), rel=1e-6)
    assert cols["probs"].dtype.name == "float16" and abs(cols["probs"].astype("float64").sum(1) - 1).max() < 1e-2
    many = torch.randn(3, 150)  # K > 100: no probability vectors, the scores still
    summary, data = encode({"test": (many, torch.tensor([0, 5, 149]))})
    assert not summary["probabilities"] and decode(data, summary)["test"]["probs"] is None


def rewrite(data: bytes, column: str, values) -> bytes:
    table = pq.read_table(pa.BufferReader(data))
    table = table.set_column(table.schema.get_field_index(column), column, values)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_a_changed_or_malformed_predictions_file_is_refused_with_the_reason():
    summary, data = encode({"test": (logits_for([0] * 20), LABELS)})
    with pytest.raises(BadPredictions, match="do not match the digest"):
        decode(rewrite(data, "pred", pa.array([1] * 20, pa.int32())), summary)
    with pytest.raises(BadPredictions, match=r"label of split 'test' outside \[0, 4\)"):
        decode(rewrite(data, "label", pa.array([9] * 20, pa.int32())), summary)
    with pytest.raises(BadPredictions, match="columns are"):
        decode(rewrite(data, "pred", pa.array([1.0] * 20, pa.float64())), summary)
    with pytest.raises(BadPredictions, match="not a readable Parquet file"):
        decode(b"PAR1 not really", summary)
    with pytest.raises(BadPredictions, match="must be"):
        encode({"test": (torch.zeros(3, 4), torch.zeros(4, dtype=torch.long))})


def test_mcnemar_and_seed_disagreement_match_the_hand_computed_values(tmp_path):
    store = ResultStore(tmp_path)
    truth = LABELS.tolist()
    wrong = [(t + 1) % 4 for t in truth]
    # seed 0: the baseline gets samples 0-9 right; the entry 0-15 -> b = 6 (10-15), c = 0
    # seed 1: the baseline gets 0-14 right; the entry 5-19 -> b = 5 (15-19), c = 5 (0-4)
    store_run(store, "ce", 0, truth[:10] + wrong[10:])
    store_run(store, "focal", 0, truth[:16] + wrong[16:])
    store_run(store, "ce", 1, truth[:15] + wrong[15:])
    store_run(store, "focal", 1, wrong[:5] + truth[5:])
    store.sync()
    con = store.connect(read_only=True)
    (board,) = build_boards(con, test="mcnemar", correction="none", baselines={"long_tail": "ce"})
    focal = next(e for e in board.entries if e.method == "focal")
    b, c = 6 + 5, 0 + 5
    assert focal.baseline_test.test == "mcnemar" and focal.baseline_test.n_pairs == 2 and focal.baseline_test.statistic == b
    assert focal.p_corrected == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue)
    # focal: seeds 0 and 1 predict differently on samples 0-4 and 16-19 -> 9 of 20
    assert focal.seed_disagreement == pytest.approx(9 / 20) and focal.disagreement_pairs == 1
    ce = next(e for e in board.entries if e.method == "ce")
    assert ce.seed_disagreement == pytest.approx(5 / 20)  # samples 10-14
    con.close()
    code, out, _ = run_cli("leaderboard", f"results={tmp_path}", "test=mcnemar", "format=csv")
    assert code == 0 and "seed_disagreement" in out.splitlines()[0] and ",mcnemar," in out


def test_rescore_recomputes_the_stored_metrics_and_flags_a_difference(tmp_path):
    store = ResultStore(tmp_path)
    store_run(store, "ce", 0, LABELS.tolist()[:12] + [0] * 8)
    store_run(store, "ce", 1, [1] * 20, scores=False)  # predictions that name no metric: rescored, not compared
    store.sync()
    rows = rescore(store.connect(read_only=True))
    compared = [r for r in rows if r.metric is not None]
    assert {(r.score, r.metric) for r in compared} == {("accuracy", "top1"), ("ece", "ece")}
    assert all(abs(r.diff) < 1e-6 for r in compared) and len(rows) == 8
    code, out, err = run_cli("rescore", f"results={tmp_path}")
    assert code == 0 and "0 differ" in err and "top1" in out
    (path,) = [p for p in store.result_paths() if '"seed": 0' in p.read_text()]
    import json

    record = json.loads(path.read_text())
    record["metrics"]["top1"]["value"] = 0.99  # a stored metric its predictions do not give
    path.write_text(json.dumps(record))
    code, out, err = run_cli("rescore", f"results={tmp_path}")
    assert code == 1 and "1 differ by more than" in err and "≠" in out


def test_rescore_without_predictions_says_so(tmp_path):
    store = ResultStore(tmp_path)
    store.write(fake_record(**LT))
    store.sync()
    code, _, err = run_cli("rescore", f"results={tmp_path}")
    assert code == 2 and "no stored per-sample predictions" in err
    with pytest.raises(HarnessError):
        from harness.api import sample_predictions

        sample_predictions(fake_record(**LT)["run_id"], results=tmp_path)
