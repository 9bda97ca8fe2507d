"""The distillation kind, its methods and the distillation suite: each method against a value
computed by hand or a limiting case, the kind's composition with augmentations and update rules,
the suite's shared teacher artifact, the CIFAR ResNet factories, and `harness new-plugin
kind=distillation` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_scaffold import harness_cmd, install_to
from torch.nn import functional as F

from harness.catalog import load_catalog
from harness.conformance import CHECK_RECIPE, loss_context, normalizer_of, tiny_data, tiny_model
from harness.engine import train
from harness.method import MethodRef
from harness.models import CifarResNet
from harness.seams import Batch, Outputs, Peer, Teacher
from harness.spec import build_grid
from harness.testing import offline_environ, run_cli
from harness.training import assemble
from harness_plugins.distillation import (
    DHKD,
    DML,
    KD,
    KD_RANDOM_TEACHER,
    NO_KD,
    SUITE_TEACHER,
    DualHeadModel,
    align_gradients,
    binary_kl_norm,
    soft_kl,
)
from harness_suites.distillation import TEACHERS, with_suite_teacher


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def ctx(k: int = 4):
    from harness.seams import TrainContext

    return TrainContext(num_classes=k, class_counts=(10,) * k, dataset_size=10 * k, epochs=1)


def batch(y: torch.Tensor) -> Batch:
    return Batch(torch.zeros(len(y), 1, 8, 8), y, torch.arange(len(y)))


def train_entry(catalog, entry: list[tuple[str, dict]], *, epochs: int = 2, seed: int = 0):
    """Train the conformance kit's tiny CNN on digits with `entry` through the real assembly and
    engine (an untrained tiny CNN is the teacher); return the per-epoch losses and the model."""
    data = tiny_data()
    refs = [MethodRef.of(catalog.methods.get(name), params) for name, params in entry]
    torch.manual_seed(seed)
    plan = assemble(catalog, refs, context=loss_context(data, epochs, seed), build_model=lambda: tiny_model(data, seed),
                    teacher=lambda name, decl: tiny_model(data, seed + 1))
    log = train(plan.model, data.train_x, data.train_y, recipe={**CHECK_RECIPE, "epochs": epochs}, parts=plan.composition, aux=plan.aux,
                normalizer=normalizer_of(data), seed=seed, device="cpu")
    return log.train_loss, plan.model


# ---------------------------------------------------------------------------------------------
# kd, no_kd: limiting cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [[("kd", {"alpha": 0.0})], [("no_kd", {})]], ids=["kd_alpha_0", "no_kd"])
def test_without_the_soft_term_the_student_trains_exactly_like_cross_entropy(catalog, entry):
    losses, model = train_entry(catalog, entry)
    ce_losses, ce_model = train_entry(catalog, [("ce", {})])
    assert losses == ce_losses  # step for step: the same loss every epoch ...
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ce_model.state_dict().values()))  # ... and the same weights


def test_soft_term_by_hand_at_temperature_one():
    # teacher (3/4, 1/4), student (1/2, 1/2): KL = 3/4 log(3/2) + 1/4 log(1/2)
    teacher, student = torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)
    assert soft_kl(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_term_tends_to_half_the_mean_squared_gap_of_the_zero_mean_logits():
    # T^2 KL(softmax(t/T) || softmax(s/T)) -> 1/(2K) sum_k (s_k - mean s - t_k + mean t)^2 as T -> infinity:
    # softmax(u)_k = (1 + u_k - mean u + O(u^2)) / K, and KL(p || q) = 1/2 sum_k (p_k - q_k)^2 / p_k + O(|p - q|^3)
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(6, 10, generator=g, dtype=torch.float64), 3 * torch.randn(6, 10, generator=g, dtype=torch.float64)
    gap = (s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))
    limit = float((gap.pow(2).sum(1) / (2 * 10)).mean())
    errors = [abs(soft_kl(s, t, temperature).item() - limit) / limit for temperature in (10.0, 100.0, 1000.0)]
    assert errors[2] < 1e-3 and errors[0] > errors[1] > errors[2]  # converges, with an error of order 1/T


def test_kd_objective_by_hand():
    method = KD.create(ctx(2), alpha=0.25, temperature=2.0)
    assert method.auxiliary_models() == {"teacher": Teacher(model=None)}  # `auto`: the suite's teacher, else the run's architecture
    teacher, student = torch.tensor([[2 * math.log(3.0), 0.0]]), torch.zeros(1, 2)
    out = Outputs(student, aux={"teacher": Outputs(teacher)})
    # CE = log 2; soft term at T = 2: 4 * KL((3/4, 1/4) || (1/2, 1/2))
    expected = 0.75 * math.log(2.0) + 0.25 * 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert method.objective(batch(torch.tensor([0])), out).item() == pytest.approx(expected, rel=1e-6)
    # soft targets (a mixed batch): the CE term is the expected CE under the target distribution
    soft = method.objective(batch(torch.tensor([[0.5, 0.5]])), out).item()
    assert soft == pytest.approx(expected, rel=1e-6)  # log 2 either way at equal student logits


def test_random_teacher_is_an_untrained_teacher_and_a_constant_one_acts_like_label_smoothing():
    method = KD_RANDOM_TEACHER.create(ctx(4), teacher="small_cnn")
    assert method.auxiliary_models() == {"teacher": Teacher(model="small_cnn", trained=False)}
    # a teacher with equal logits: its soft target is uniform, so the soft term is
    # T^2 * (-log K - mean_k log softmax(s / T)_k) (cross-entropy to uniform minus its entropy)
    student = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    out = Outputs(student, aux={"teacher": Outputs(torch.zeros(1, 4))})
    t, alpha = 4.0, 0.9
    smoothing = t * t * (-math.log(4) - F.log_softmax(student / t, dim=1).mean().item())
    expected = (1 - alpha) * F.cross_entropy(student, torch.tensor([1])).item() + alpha * smoothing
    assert method.objective(batch(torch.tensor([1])), out).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# dhkd
# ---------------------------------------------------------------------------------------------


def authors_binary_kl_norm(student: torch.Tensor, teacher: torch.Tensor, temperature: float, eps: float = 1e-8) -> torch.Tensor:
    """The authors' `BinaryKLNorm.forward`, transcribed: KLDivLoss(log d, 1/2) + KLDivLoss(log(1 - d), 1/2)."""
    d = torch.sigmoid((student - teacher) / temperature).clamp(eps, 1 - eps)
    target = torch.full_like(d, 0.5)
    loss = F.kl_div(d.log(), target, reduction="none") + F.kl_div((1 - d).log(), 1 - target, reduction="none")
    return temperature**2 * loss.sum() / len(student)


def test_binary_kl_norm_by_hand_and_against_the_authors_formula():
    teacher = torch.zeros(1, 2)
    assert binary_kl_norm(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)  # equal logits: no loss
    # (z_s - z_t) / T = log 3 in one logit: d = 3/4, so KL(B(1/2) || B(3/4)) = -log 2 - 1/2 log(3/16), times T^2
    student = torch.tensor([[2 * math.log(3.0), 0.0]])
    assert binary_kl_norm(student, teacher, 2.0).item() == pytest.approx(4 * (-math.log(2) - 0.5 * math.log(3 / 16)), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(8, 10, generator=g), 3 * torch.randn(8, 10, generator=g)
    assert binary_kl_norm(s, t, 2.0).item() == pytest.approx(authors_binary_kl_norm(s, t, 2.0).item(), rel=1e-5)
    assert torch.isfinite(binary_kl_norm(s * 100, t, 2.0))  # the authors' clamp overflows in float32 there; logsigmoid does not


def test_gradient_alignment_by_hand():
    task, distill = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    # conflict (dot = -1): distill loses its projection on task, (0, 1); the step uses (1, 0) + (0, 1)
    assert align_gradients(task, distill)[0].tolist() == pytest.approx([1.0, 1.0])
    # no conflict: the plain sum
    assert align_gradients(task, [torch.tensor([1.0, 1.0])])[0].tolist() == pytest.approx([2.0, 1.0])
    # the projection is over all parameters as one vector: here the dot product is -1 + 2 = 1 > 0
    merged = align_gradients([torch.tensor([1.0]), torch.tensor([1.0])], [torch.tensor([-1.0]), torch.tensor([2.0])])
    assert [m.item() for m in merged] == pytest.approx([0.0, 3.0])


def test_dhkd_adds_an_auxiliary_head_and_predicts_with_the_main_one():
    data = tiny_data()
    model = tiny_model(data, 0)
    head = model.classifier
    method = DHKD.create(ctx(data.num_classes))
    shaped = method.shape_model(model, ctx(data.num_classes)).eval()
    assert isinstance(shaped, DualHeadModel) and shaped.head is head  # the original classifier stays the predicting head
    x = torch.randn(5, 1, 8, 8)
    main, heads = shaped.forward_heads(x)
    assert torch.equal(shaped(x), main) and heads["aux"].shape == main.shape
    out = Outputs(main, heads={"aux": heads["aux"]}, aux={"teacher": Outputs(heads["aux"].detach())})
    y = torch.tensor([0, 1, 2, 3, 4])
    # the auxiliary head equal to the teacher: only the main head's cross-entropy is left
    assert method.objective(batch(y), out).item() == pytest.approx(F.cross_entropy(main, y).item(), rel=1e-6)


def test_dhkd_gradient_alignment_changes_nothing_without_a_distillation_loss(catalog):
    # alpha = 0: the distillation gradient is zero, so the aligned step (its own step) equals the default step
    aligned, model = train_entry(catalog, [("dhkd", {"alpha": 0.0, "gradient_alignment": True})])
    plain, plain_model = train_entry(catalog, [("dhkd", {"alpha": 0.0, "gradient_alignment": False})])
    assert aligned == pytest.approx(plain, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(model.state_dict().values(), plain_model.state_dict().values()))


# ---------------------------------------------------------------------------------------------
# dml
# ---------------------------------------------------------------------------------------------


def test_mutual_learning_by_hand():
    method = DML.create(ctx(3))
    assert method.auxiliary_models() == {"peer": Peer()}
    z1 = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 2])
    loss = method.objective(batch(y), Outputs(z1, aux={"peer": Outputs(z2)}))
    p1, p2 = F.softmax(z1, 1), F.softmax(z2, 1)
    kl = lambda p, q: (p * (p / q).log()).sum(1).mean()  # noqa: E731
    expected = F.cross_entropy(z1, y) + kl(p2, p1) + F.cross_entropy(z2, y) + kl(p1, p2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    # d/dz1: (p1 - onehot(y)) / B from its CE, (p1 - p2) / B from KL(p2 || p1) (p2 a constant)
    onehot = F.one_hot(y, 3).float()
    assert torch.allclose(z1.grad, ((p1 - onehot + p1 - p2) / 2).detach(), atol=1e-6)
    # equal predictions: nothing to learn from each other
    same = method.objective(batch(y), Outputs(z1.detach(), aux={"peer": Outputs(z1.detach())}))
    assert same.item() == pytest.approx(2 * F.cross_entropy(z1.detach(), y).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# the kind in entries, the suite
# ---------------------------------------------------------------------------------------------


def test_a_distillation_method_owns_the_objective(catalog):
    _, specs = build_grid(catalog, {"suite": "distillation", "method": "kd,kd+mixup,sam+kd,no_kd", "seeds": "1"})
    assert [s.entry for s in specs] == ["kd", "kd+mixup", "kd+sam", "no_kd"]  # no ce added: kd brings its objective
    with pytest.raises(Exception, match="both own the objective"):
        build_grid(catalog, {"suite": "distillation", "method": "kd+focal", "seeds": "1"})
    _, default = build_grid(catalog, {"suite": "distillation", "seeds": "1"})
    assert {s.entry for s in default} >= {m.name for m in (NO_KD, KD, KD_RANDOM_TEACHER, DHKD, DML)}


def test_the_suite_fills_in_its_teacher_and_keeps_an_explicit_one(catalog):
    kd = MethodRef.of(KD)
    chosen = MethodRef.of(KD, {"teacher": "resnet110"})
    ce = MethodRef.of(catalog.methods.get("ce"))
    filled = with_suite_teacher((kd, chosen, ce), TEACHERS["tiny"])
    assert kd.hyperparameters["teacher"] == SUITE_TEACHER
    assert filled[0].hyperparameters["teacher"] == "small_cnn" and filled[0].changed == kd.changed  # the run's identity is unchanged
    assert filled[1].hyperparameters["teacher"] == "resnet110" and filled[2] == ce
    assert TEACHERS == {"tiny": "small_cnn", "paper": "resnet56"}


@pytest.mark.parametrize(("depth", "published"), [(20, 0.27), (56, 0.85), (110, 1.7)])
def test_cifar_resnets_have_the_published_parameter_counts(catalog, depth, published):
    # He et al. 2016, Table 6 (CIFAR-10): 0.27 M, 0.85 M, 1.7 M parameters
    model = catalog.model(f"resnet{depth}").build(10, 3, 32)
    assert isinstance(model, CifarResNet)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert float(f"{count:.2g}") == published


@pytest.mark.slow
def test_kd_mixup_and_kd_sam_run_and_share_the_suite_teacher(tmp_path, monkeypatch):
    for key, value in offline_environ(tmp_path).items():
        monkeypatch.setenv(key, value)
    results = tmp_path / "results"
    code, out, err = run_cli("run", "suite=distillation", "method=kd+mixup,kd+sam,kd_random_teacher,no_kd", "dataset=digits", "epochs=2",
                             "seeds=1", f"results={results}")
    assert code == 0, err
    assert "kd+mixup" in out and "kd+sam" in out  # the closing leaderboard ranks both
    records = {r["entry"]: r for r in (json.loads(p.read_text()) for p in results.glob("runs/*/result.json"))}
    assert set(records) == {"kd+mixup", "kd+sam", "kd_random_teacher", "no_kd"} and all(r["status"] == "ok" for r in records.values())
    teacher = records["no_kd"]["info"]["teacher_artifact_id"]
    assert {r["info"]["teacher_artifact_id"] for r in records.values()} == {teacher}  # one teacher for the whole grid
    assert [r["info"]["teacher_reused"] for r in records.values()].count(False) == 1  # trained once, then loaded
    for entry in ("kd+mixup", "kd+sam"):  # the method distilled from that very network
        assert records[entry]["info"]["auxiliary_models"] == {"teacher": f"the suite's trained teacher ({teacher})"}
    assert records["kd_random_teacher"]["info"]["auxiliary_models"] == {"teacher": "an untrained (random) small_cnn"}
    assert records["no_kd"]["info"]["auxiliary_models"] == {}
    assert 0.0 < records["kd+sam"]["metrics"]["teacher_agreement"]["value"] <= 1.0


@pytest.mark.slow
def test_new_plugin_kind_distillation_installs_lists_runs_and_passes_its_tests(tmp_path):
    site = tmp_path / "site"
    made = harness_cmd("new-plugin", "my-kd", "kind=distillation", f"dir={tmp_path / 'my-kd'}", pythonpath=site, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "my-kd"
    assert 'kind="distillation"' in (root / "harness_my_kd" / "methods.py").read_text() and "suite=distillation" in made.stdout
    install_to(root, site, tmp_path)
    listed = harness_cmd("list", "methods", "my_kd*", pythonpath=site, cwd=tmp_path)
    assert listed.returncode == 0 and "my_kd_example" in listed.stdout and "distillation" in listed.stdout, listed.stderr
    env_cache = {**os.environ, **offline_environ(tmp_path), "PYTHONPATH": str(site)}
    ran = subprocess.run([sys.executable, "-m", "harness", "run", "suite=distillation", "method=no_kd,my_kd_example", "dataset=digits", "epochs=1",
                          "seeds=1", f"results={tmp_path / 'results'}"], capture_output=True, text=True, env=env_cache, cwd=tmp_path, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "my_kd_example" in ran.stdout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(root)])}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "2 passed" in tests.stdout
