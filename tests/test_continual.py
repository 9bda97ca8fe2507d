"""The continual suite's protocol: streams, the accuracy-matrix and continual-evaluation metrics, and
one tiny end-to-end run of each protocol."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from harness.testing import offline_environ, run_cli
from harness_plugins.merging import BTM, OUTPUT_ENSEMBLE
from harness_suites.continual import build_stream, continual_eval_metrics, matrix_metrics, permute_pixels, rotate, run


def _data(n_per_class: int = 10, k: int = 10):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(k).repeat_interleave(n_per_class)
    x = torch.randint(0, 256, (len(y), 1, 8, 8), generator=g, dtype=torch.uint8)
    return SimpleNamespace(train_x=x, train_y=y, test_x=x[::3], test_y=y[::3], num_classes=k)


def test_matrix_metrics_by_hand():
    r = [[0.9, 0.1, 0.0], [0.5, 0.8, 0.2], [0.4, 0.6, 0.7]]
    b = [0.1, 0.1, 0.1]
    m = matrix_metrics(r, b)
    assert m["acc"] == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert m["bwt"] == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    assert m["fwt"] == pytest.approx(((0.1 - 0.1) + (0.2 - 0.1)) / 2)
    # forgetting: task 0 max(0.9, 0.5) - 0.4 = 0.5; task 1 max(0.8) - 0.6 = 0.2
    assert m["forgetting"] == pytest.approx((0.5 + 0.2) / 2)


def test_continual_evaluation_metrics_by_hand():
    # two tasks of 10 iterations; evaluations every 5 iterations and at the end
    iterations = [0, 5, 10, 15, 20]
    curves = [[0.1, 0.6, 0.9, 0.3, 0.7], [0.0, 0.0, 0.0, 0.5, 0.8]]
    m = continual_eval_metrics(iterations, curves, task_end=[10, 20])
    assert m["min_acc"] == pytest.approx(0.3)  # task 0 after iteration 10: min(0.3, 0.7)
    assert m["wc_acc"] == pytest.approx(0.8 / 2 + 0.5 * 0.3)
    assert m["stability_gap"] == pytest.approx(0.9 - 0.3)  # at the switch 0.9, lowest during task 1: 0.3


def test_class_incremental_stream_splits_the_classes_in_a_seeded_order():
    data = _data()
    s = build_stream(data, "class", 5, seed=0)
    classes = [c for t in s.tasks for c in t.classes]
    assert sorted(classes) == list(range(10)) and all(len(t.classes) == 2 for t in s.tasks)
    assert build_stream(data, "class", 5, seed=1).info["class_order"] != s.info["class_order"]
    assert len(s.base[1]) == 10 and sum(len(t.y) for t in s.tasks) == 90  # 10% of each class is the base split
    base_ids = {tuple(v.flatten().tolist()) for v in s.base[0]}
    assert not base_ids & {tuple(v.flatten().tolist()) for t in s.tasks for v in t.x}
    for task, (_, ty), mask in zip(s.tasks, s.tests, s.masks):
        assert set(task.y.tolist()) == set(task.classes) == set(ty.tolist()) and mask is None
    task_il = build_stream(data, "task", 5, seed=0)
    assert [m.nonzero().flatten().tolist() for m in task_il.masks] == [list(t.classes) for t in task_il.tasks]
    with pytest.raises(ValueError, match="equal tasks"):
        build_stream(data, "class", 3, seed=0)


def test_domain_and_permuted_streams_keep_every_class_and_transform_per_task():
    data = _data()
    s = build_stream(data, "domain", 5, seed=0)
    assert s.info["rotations"] == [0.0, 45.0, 90.0, 135.0, 180.0]
    assert sum(len(t.y) for t in s.tasks) == 90 and all(t.classes == tuple(range(10)) for t in s.tasks)
    assert torch.equal(s.tests[0][0], data.test_x)
    p = build_stream(data, "permuted", 3, seed=0)
    assert not torch.equal(p.tests[0][0], p.tests[1][0])
    assert sorted(p.tests[0][0][0].flatten().tolist()) == sorted(data.test_x[0].flatten().tolist())


def test_rotation_and_permutation_are_exact_on_the_pixel_grid():
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(rotate(x, 0), x)
    assert torch.equal(rotate(x, 180), torch.flip(x, dims=(2, 3)))
    assert torch.equal(rotate(rotate(x, 90), 270), x)
    perm = torch.randperm(64)
    out = permute_pixels(x, perm)
    assert torch.equal(out.reshape(3, 1, 64), x.reshape(3, 1, 64)[:, :, perm])


@pytest.mark.parametrize("method", [OUTPUT_ENSEMBLE, BTM])
def test_the_merging_protocol_refuses_ensembles_before_loading_data(method):
    # it evaluates one merged model; an ensemble's weight-averaged stand-in would be mislabelled
    def unused(name):
        raise AssertionError("the refusal comes before any data is loaded")

    spec = SimpleNamespace(recipe_dict=dict, variant={"protocol": "merging", "scenario": "class", "tasks": 5}, kinds=("merging",),
                           entry=method.name, method=lambda kind: method)
    ctx = SimpleNamespace(spec=spec, build=lambda kind, mctx, **kw: method.create(mctx), load_dataset=unused)
    with pytest.raises(ValueError, match="suite=merging"):
        run(ctx)


@pytest.mark.slow
def test_both_protocols_run_end_to_end(tmp_path, monkeypatch):
    for key, value in offline_environ(tmp_path).items():
        monkeypatch.setenv(key, value)
    results = tmp_path / "r"
    code, out, err = run_cli("run", "suite=continual", "method=naive,replay", "tasks=2", "epochs=1", "seed=0", f"results={results}")
    assert code == 0, err
    assert "protocol=strategy,scenario=class,tasks=2" in out and "ce+replay" in out
    code, out, err = run_cli("run", "suite=continual", "protocol=merging", "method=ties,task_arithmetic", "tasks=2", "epochs=1", "seed=0", f"results={results}")
    assert code == 0, err
    assert "protocol=merging,scenario=class,tasks=2" in out and "ce+ties" in out
    records = [json.loads(p.read_text()) for p in results.glob("runs/*/result.json")]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    strategy = next(r for r in records if r["entry"] == "ce+naive")
    assert len(strategy["series"]["acc_matrix"]) == 4 and strategy["info"]["num_tasks"] == 2
    assert len(strategy["series"]["probe_acc_task0"]) == len(strategy["series"]["eval_iteration"])
    merged = [r for r in records if r["variant"].startswith("protocol=merging")]
    assert {r["info"]["base_artifact"] for r in merged} == {merged[0]["info"]["base_artifact"]}  # one shared base
    assert any(all(r["info"]["experts_reused"]) for r in merged)  # the second method reused the experts
    assert all(0 <= r["metrics"]["acc"]["value"] <= 1 for r in records)
    # the protocol follows from the entry's kind; asking for the other one is refused before training
    code, out, err = run_cli("run", "suite=continual", "method=average", "tasks=2", "epochs=1", "seed=0", f"results={results}")
    assert code == 0 and "protocol=merging,scenario=class,tasks=2" in out and "ce+average" in out
    code, out, err = run_cli("run", "suite=continual", "protocol=strategy", "method=average", "tasks=2", "epochs=1", "seed=0", f"results={results}")
    assert code == 2 and "runs with protocol=merging" in err
