"""The merging suite's protocol: its tasks and splits, the task-heads state dicts, the evaluation
of merged bodies and ensembles, and tiny end-to-end runs of its three protocols."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import harness_suites.merging as suite
from harness.catalog import load_catalog
from harness.engine import Normalizer
from harness.models import SmallCNN
from harness.spec import build_grid
from harness.testing import run_cli
from harness_plugins.merging import LAMBDA_GRID, TIES_LAMBDA_GRID, Ensemble


def _dataset(n_per_class: int, side: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.randint(0, 256, (len(y), 1, side, side), generator=g, dtype=torch.uint8)
    return SimpleNamespace(train_x=x, train_y=y, test_x=x[::4], test_y=y[::4], num_classes=10, in_chans=1, img_size=side)


def _rows(x: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(v.flatten().tolist()) for v in x}


def test_five_different_tasks_with_disjoint_pretraining_validation_and_training_splits():
    digits, uci = _dataset(20, 12, 0), _dataset(10, 8, 1)
    data = suite.build_tasks(digits, uci, seed=0)
    assert [t.name for t in data.tasks] == ["mnist", "rot90", "inverted", "permuted", "uci"]
    mnist, rot, inv, perm, uci_task = data.tasks
    assert torch.equal(rot.train.x, torch.rot90(mnist.train.x, 1, dims=(2, 3)))
    assert torch.equal(inv.test.x, 255 - mnist.test.x)
    assert sorted(perm.train.x[0].flatten().tolist()) == sorted(mnist.train.x[0].flatten().tolist())
    assert not torch.equal(perm.train.x, mnist.train.x)
    assert uci_task.train.x.shape[-1] == 12 and torch.equal(uci_task.test.y, uci.test_y)  # upsampled to the digits' size
    # per class: 20% pre-training, 10% validation, the rest training (4 / 2 / 14 of 20)
    assert len(mnist.val.y) == 20 and len(mnist.train.y) == 140
    assert _rows(mnist.train.x).isdisjoint(_rows(mnist.val.x))
    assert len(data.pretrain.y) == 40 + 20  # 4 per class of the digits, 2 per class of the UCI set
    # the pre-training split is broad: its digits appear in several domains, never as a task's training image
    shown = [_rows(transform(digits.train_x)) for transform in suite.task_transforms(12).values()]
    pre = _rows(data.pretrain.x)
    assert sum(bool(pre & domain) for domain in shown) >= 3
    assert pre.isdisjoint(_rows(torch.cat([t.train.x for t in data.tasks] + [t.val.x for t in data.tasks])))
    # the seed draws the splits; the permutation is part of the task and never changes
    other = suite.build_tasks(digits, uci, seed=1)
    assert not torch.equal(other.tasks[0].train.x, mnist.train.x)
    assert torch.equal(suite.task_transforms(12)["permuted"](digits.test_x), other.tasks[3].test.x)


def _arch(num_tasks: int = 2) -> suite.Architecture:
    ctx = SimpleNamespace(new_model=lambda num_classes, in_chans, img_size: SmallCNN(num_classes, in_chans, img_size, width=4, fc_hidden=8))
    return suite.Architecture(ctx, 10, 1, 8, num_tasks)


def test_task_heads_states_hold_the_body_once_and_one_head_per_task():
    arch = _arch()
    torch.manual_seed(0)
    single = [SmallCNN(10, 1, 8, width=4, fc_hidden=8).eval() for _ in range(2)]
    body, head0 = suite.body_and_head(single[0].state_dict(), arch.prefix)
    _, head1 = suite.body_and_head(single[1].state_dict(), arch.prefix)
    state = suite.task_heads_state(body, [head0, head1])
    assert set(state) == set(arch.task_heads().state_dict())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(arch.task_model(state, 0).eval()(x), single[0](x))
        task1 = arch.task_model(state, 1).eval()(x)
        assert torch.allclose(task1, single[1].classifier(single[0].features(x)))  # body 0, head 1
    # the joint model's K x T outputs are the task heads stacked
    joint = suite.joint_start(arch, body, [head0, head1])
    assert joint["classifier.weight"].shape == (20, 8)
    back = suite.joint_heads_state(arch, joint)
    assert torch.equal(back["heads.1.weight"], head1["weight"]) and torch.equal(back["heads.0.bias"], head0["bias"])


def test_an_ensemble_is_scored_by_its_members_mean_probabilities():
    arch = _arch(num_tasks=1)
    x = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (30,))
    task = suite.TaskData("t", suite.Split(x, y), suite.Split(x, y), suite.Split(x, y))
    evaluator = suite.Evaluator(arch, [task], Normalizer.fit(x), "cpu")
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append({k: v.clone() for k, v in arch.task_heads().state_dict().items()})
    alone = evaluator.accuracies(states[0])
    assert evaluator.accuracies(Ensemble((states[0], states[0]), (0.5, 0.5))) == alone
    probs = (evaluator.probabilities(states[0], 0, "test") + 3 * evaluator.probabilities(states[1], 0, "test")) / 4
    mixed = evaluator.accuracies(Ensemble(tuple(states), (0.25, 0.75)))
    assert mixed == [float((probs.argmax(1) == y).float().mean())]


@pytest.fixture
def tiny_protocol(monkeypatch):
    """The protocol at toy sizes: 8x8 digits for every task, one epoch everywhere."""
    for name, value in {"PRETRAIN_EPOCHS": 1, "PROBE_EPOCHS": 1, "TRAJECTORY_CHECKPOINTS": 2, "BN_SAMPLES": 64, "UNLABELED_BATCHES": 2,
                        "UNLABELED_PER_TASK": 8, "FISHER_SAMPLES": 16}.items():
        monkeypatch.setattr(suite, name, value)
    return ("dataset=digits", "epochs=1", "seed=0")


def _records(results) -> list[dict]:
    return [json.loads(p.read_text()) for p in results.glob("runs/*/result.json")]


@pytest.mark.slow
def test_the_multitask_protocol_end_to_end(tmp_path, tiny_protocol):
    results = tmp_path / "r"
    code, out, err = run_cli("run", "suite=merging", "method=ties,task_arithmetic,output_ensemble,adamerging,fisher", "adamerging.steps=3",
                             *tiny_protocol, f"results={results}")
    assert code == 0, err
    assert "protocol=multitask" in out and "output_ensemble" in out
    records = {r["entry"].split("[")[0].split("@")[0]: r for r in _records(results)}
    assert all(r["status"] == "ok" for r in records.values()), [r["error"] for r in records.values() if r["status"] != "ok"]
    ties, ta = records["ties"], records["task_arithmetic"]
    assert ties["series"]["search_values"] == list(TIES_LAMBDA_GRID) and ta["series"]["search_values"] == list(LAMBDA_GRID)
    best = max(ties["series"]["search_val_acc"])
    assert ties["info"]["selected"]["lam"] == ties["series"]["search_values"][ties["series"]["search_val_acc"].index(best)]
    assert ties["metrics"]["val_acc"]["value"] == pytest.approx(best)  # the chosen value's validation score, what tune=N selects on
    assert records["output_ensemble"]["info"]["ensemble"] is True
    for r in records.values():
        per_task = r["series"]["merged_acc_per_task"]
        assert len(per_task) == 5 and r["metrics"]["acc"]["value"] == pytest.approx(sum(per_task) / 5)
        ratios = [a / e for a, e in zip(per_task, r["series"]["expert_acc_per_task"])]
        assert r["metrics"]["normalized_acc"]["value"] == pytest.approx(sum(ratios) / 5)
    # one base, one set of experts and one joint model for the whole cell: the same references everywhere
    assert len({tuple(r["series"]["expert_acc_per_task"]) for r in records.values()}) == 1
    assert len({r["metrics"]["joint_acc"]["value"] for r in records.values()}) == 1
    # a coefficient other than the default given on the command line is used as is, without a search
    code, out, err = run_cli("run", "suite=merging", "method=ties", "ties.lam=1.2", *tiny_protocol, f"results={results}")
    assert code == 0, err
    fixed = next(r for r in _records(results) if r["entry"] == "ties[lam=1.2]")
    assert "search_values" not in fixed["series"] and "selected" not in fixed["info"]
    # tune=N draws TIES's top_k from its search distribution (draw 1: 10; draw 0 is the default); lambda is still searched
    code, out, err = run_cli("run", "suite=merging", "method=ties", "tune=2", *tiny_protocol, f"results={results}")
    assert code == 0, err
    drawn = next(r for r in _records(results) if r["entry"] == "ties[top_k=10.0]")
    assert drawn["series"]["search_values"] == list(TIES_LAMBDA_GRID) and "val_acc" in drawn["metrics"]


@pytest.mark.slow
def test_the_seeds_and_trajectory_protocols_end_to_end(tmp_path, tiny_protocol):
    results = tmp_path / "r"
    code, out, err = run_cli("run", "suite=merging", "protocol=seeds,trajectory", "method=pleas,lcsc,average", "lcsc.generations=1", "lcsc.population=2",
                             *tiny_protocol, f"results={results}")
    assert code == 0, err
    records = _records(results)
    assert len(records) == 6 and all(r["status"] == "ok" for r in records), [r["error"] for r in records if r["status"] != "ok"]
    seeds = [r for r in records if r["variant"] == "protocol=seeds"]
    assert all(r["info"]["base_seeds"] == [0, 1, 2, 3, 4] for r in seeds)  # a base per task
    trajectory = [r for r in records if r["variant"] == "protocol=trajectory"]
    assert all(r["info"]["checkpoints"] == 2 for r in trajectory)
    lcsc = next(r for r in trajectory if r["entry"].startswith("lcsc["))
    assert len(lcsc["series"]["lcsc_coefficients"]) == 2 and sum(lcsc["series"]["lcsc_coefficients"]) == pytest.approx(1.0)
    code, out, err = run_cli("run", "suite=merging", "protocol=trajectory", "method=fisher", *tiny_protocol, f"results={results}")
    assert code == 0, err
    failed = next((r for r in _records(results) if r["entry"] == "fisher"), None)
    assert failed is not None, (out, [(r["entry"], r["variant"], r["status"]) for r in _records(results)])
    assert failed["status"] == "failed" and "not task experts" in failed["error"]


def test_the_default_grid_leaves_pleas_and_lcsc_to_their_own_cells_and_tuning_selects_on_validation():
    catalog = load_catalog()
    _, specs = build_grid(catalog, {"suite": "merging"})
    assert {s.entry for s in specs} == {"average", "task_arithmetic", "ties", "dare", "fisher", "adamerging@2", "output_ensemble", "btm"}
    assert {dict(s.variant)["protocol"] for s in specs} == {"multitask"} and {s.seed for s in specs} == {0, 1, 2}
    _, named = build_grid(catalog, {"suite": "merging", "method": "pleas,lcsc", "protocol": "seeds,trajectory"})
    assert {(s.entry.split("[")[0], dict(s.variant)["protocol"]) for s in named} >= {("pleas", "seeds"), ("lcsc", "trajectory")}
    merging = catalog.suites.get("merging")
    assert merging.validation_metric == "val_acc" and merging.primary == "acc"
