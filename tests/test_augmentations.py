"""Tests of the built-in augmentations: exact mixing, hand-computed loss terms, SLA's aggregation.

Reference values are written out by hand (with `math` or with explicit tensor indexing of the
inputs), never with the code under test, so a wrong formula in plugins/augmentations.py fails here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.kinds import Augmentation, AugmentContext
from harness.models import SmallCNN, get_classifier
from harness.testing import run_cli
from harness_plugins import augmentations as A

NAMES = ("mixup", "cutmix", "rankmixup", "decoupled_mixup", "randaugment", "sla")
K = 5


def ctx(num_classes: int = K) -> AugmentContext:
    return AugmentContext(num_classes=num_classes, epochs=1)


def methods() -> dict:
    found = []
    A.harness_register_methods(register=found.append)
    return {m.name: m for m in found}


def build(name: str, **params) -> Augmentation:
    method = methods()[name]
    return method.create(ctx(), **params)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 8, c: int = 1, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images from uint8 pixels (with black and white present), int and soft targets."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (b, c, size, size), generator=g)
    u8[0, :, 0, 0], u8[0, :, 0, 1] = 0, 255
    x = (u8.float() / 255 - 0.3) / 0.4
    y = torch.randint(0, K, (b,), generator=g)
    soft = torch.softmax(torch.randn(b, K, generator=g), dim=1)
    return x, y, soft


# ---------------------------------------------------------------------------------------------
# registration and the shared contract
# ---------------------------------------------------------------------------------------------


def test_all_methods_registered_with_paper_and_typed_params():
    found = methods()
    assert set(found) == {*NAMES, "sla_sd"}  # sla_sd: tests/test_sla_sd.py
    for m in found.values():
        assert m.kind == "augmentation" and m.paper and m.url.startswith("https://")
    assert {p.name: p.default for p in found["mixup"].params} == {"alpha": 1.0}
    assert {p.name: p.default for p in found["randaugment"].params} == {"num_ops": 2, "magnitude": 9}
    assert {p.name: p.default for p in found["decoupled_mixup"].params} == {"alpha": 1.0, "eta": 0.1}
    assert {p.name: p.default for p in found["rankmixup"].params}["variant"] == "mndcg"


def expected_rows(name: str, b: int) -> int:
    return {"rankmixup": 4 * b, "sla": 4 * b}.get(name, b)  # rankmixup: raw + 3 mixes (M-NDCG)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("soft", [False, True])
def test_shapes_dtypes_and_valid_targets(name, soft):
    x, y, ys = batch()
    aug = build(name)
    targets = ys if soft else y
    xo, yo = aug(x, targets, gen())
    rows = expected_rows(name, len(x))
    assert xo.shape == (rows, *x.shape[1:]) and xo.dtype == x.dtype and torch.isfinite(xo).all()
    assert len(yo) == rows
    k = K * aug.label_multiplier
    if yo.dtype.is_floating_point:
        assert yo.shape == (rows, k)
        assert torch.allclose(yo.sum(dim=1), torch.ones(rows), atol=1e-5) and (yo >= 0).all()
    else:
        assert yo.dtype == torch.int64 and not soft and int(yo.max()) < k
    if name == "randaugment":  # targets untouched
        assert yo is targets


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_the_generator(name):
    x, y, _ = batch(b=16, size=12)
    aug = build(name, prob=1.0) if name == "cutmix" else build(name)  # prob 0.5 may skip both batches
    a = aug(x, y, gen(1))
    b = aug(x, y, gen(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    if name != "sla":  # sla is deterministic by design
        c = aug(x, y, gen(2))
        assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", NAMES)
def test_loss_term_is_finite_scalar_or_none(name):
    x, y, _ = batch()
    aug = build(name)
    _, yo = aug(x, y, gen())
    logits = torch.randn(len(yo), K * aug.label_multiplier, requires_grad=True)
    term = aug.loss_term(logits, yo)
    if name in ("rankmixup", "decoupled_mixup"):
        assert term.ndim == 0 and torch.isfinite(term)
        term.backward()
        assert torch.isfinite(logits.grad).all()
    else:
        assert term is None


# ---------------------------------------------------------------------------------------------
# Beta sampling from the generator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(0.2, 0.2), (1.0, 1.0), (2.0, 5.0), (0.5, 3.0)])
def test_beta_sampler_moments(a, b):
    s = A.sample_beta(a, b, 40000, gen(3), "cpu")
    assert s.dtype == torch.float32 and ((s >= 0) & (s <= 1)).all()
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(float(s.mean()) - mean) < 4 * math.sqrt(var / len(s)) + 1e-3
    assert abs(float(s.var()) - var) < 0.05 * var + 1e-3


def test_beta_sampler_is_reproducible_and_seed_dependent():
    assert torch.equal(A.sample_beta(1.0, 1.0, 10, gen(5), "cpu"), A.sample_beta(1.0, 1.0, 10, gen(5), "cpu"))
    assert not torch.equal(A.sample_beta(1.0, 1.0, 10, gen(5), "cpu"), A.sample_beta(1.0, 1.0, 10, gen(6), "cpu"))


# ---------------------------------------------------------------------------------------------
# mixup and cutmix
# ---------------------------------------------------------------------------------------------


def test_mixup_images_and_targets_share_one_lambda():
    b = 6
    x = torch.randn(b, 1, 4, 4, generator=gen(7))
    y = torch.arange(b) % K  # rows 0 and 5 share class 0
    aug = build("mixup")
    xo, yo = aug(x, y, gen(8))
    # recover lam from a row mixing two different classes, then find each row's partner by search
    lam = None
    for i in range(b):
        top = yo[i].topk(2)
        if float(top.values[1]) > 1e-6:
            lam = float(yo[i, y[i]])
            break
    assert lam is not None and 0 < lam < 1
    for i in range(b):
        partners = [j for j in range(b) if torch.allclose(xo[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)]
        assert len(partners) == 1
        j = partners[0]
        expected = lam * nn.functional.one_hot(y[i], K).float() + (1 - lam) * nn.functional.one_hot(y[j], K).float()
        assert torch.allclose(yo[i], expected, atol=1e-6)
    assert math.isclose(lam, float(aug.last_lam), rel_tol=1e-6)


def test_mixup_mixes_soft_rows():
    x, _, ys = batch()
    aug = build("mixup")
    xo, yo = aug(x, ys, gen(9))
    lam, perm = aug.last_lam, aug.last_perm
    assert torch.allclose(yo, lam * ys + (1 - lam) * ys[perm]) and torch.allclose(xo, lam * x + (1 - lam) * x[perm])


def test_cutmix_pastes_a_box_and_uses_its_area():
    x, y, _ = batch(b=6, size=10)
    aug = build("cutmix", prob=1.0)
    for seed in range(5):
        xo, yo = aug(x, y, gen(seed))
        box, perm = aug.last_box, aug.last_perm
        rows = box.any(dim=1).nonzero().flatten()
        cols = box.any(dim=0).nonzero().flatten()
        if len(rows):  # a rectangle: contiguous rows x contiguous cols
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            assert box.sum() == (r1 - r0) * (c1 - c0) and box[r0:r1, c0:c1].all()
            assert torch.equal(xo[:, :, r0:r1, c0:c1], x[perm][:, :, r0:r1, c0:c1])
        assert torch.equal(xo[:, :, ~box], x[:, :, ~box])
        lam = 1 - float(box.sum()) / 100
        assert math.isclose(float(aug.last_lam), lam, abs_tol=1e-6)
        onehot = nn.functional.one_hot(y, K).float()
        assert torch.allclose(yo, lam * onehot + (1 - lam) * onehot[perm], atol=1e-6)


def test_cutmix_with_probability_zero_is_identity_with_one_hot_targets():
    x, y, _ = batch()
    xo, yo = build("cutmix", prob=0.0)(x, y, gen())
    assert torch.equal(xo, x) and torch.equal(yo, nn.functional.one_hot(y, K).float())


# ---------------------------------------------------------------------------------------------
# randaugment
# ---------------------------------------------------------------------------------------------


def test_randaugment_identity_and_magnitude_zero_leave_images_unchanged():
    x, y, _ = batch(b=16, size=12)
    xo, _ = A.RandAugment(ctx(), num_ops=3, magnitude=9, ops=("identity",))(x, y, gen())
    assert torch.allclose(xo, x, atol=1e-5)
    still = tuple(o for o in A.RANDAUGMENT_OPS if o not in ("autocontrast", "equalize"))  # no magnitude
    xo, _ = A.RandAugment(ctx(), num_ops=2, magnitude=0, ops=still)(x, y, gen())
    assert torch.allclose(xo, x, atol=1e-5)


def test_affine_warp_rotation_by_90_degrees_is_rot90_and_zero_angle_is_identity():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    a90 = torch.tensor([[0.0, -1.0], [1.0, 0.0]]).repeat(2, 1, 1)  # counter-clockwise
    assert torch.equal(A.affine_warp(x, a90, torch.zeros(2, 2)), torch.rot90(x, 1, dims=(2, 3)))
    rotated = A.apply_op("rotate", x / x.max(), torch.ones(2), level=0.0)
    assert torch.allclose(rotated, x / x.max())


def test_rotate_op_matches_torchvision_rotate():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    u8 = torch.randint(0, 256, (4, 1, 16, 16), generator=gen(4), dtype=torch.uint8)
    ours = A.apply_op("rotate", u8.float() / 255, torch.ones(4), level=1.0)  # +30 degrees
    ref = tvf.rotate(u8, 30.0, interpolation=tvf.InterpolationMode.NEAREST).float() / 255
    assert (ours - ref).abs().lt(1e-6).float().mean() > 0.97  # nearest-pixel rounding may differ on a few pixels


def test_translate_moves_content_by_whole_pixels():
    u = torch.rand(1, 1, 10, 10, generator=gen(2))
    out = A.apply_op("translate_x", u, torch.ones(1), level=1.0)  # floor(150/331 * 10) = 4 pixels
    assert torch.equal(out[..., 4:], u[..., :-4]) and (out[..., :4] == 0).all()


def test_equalize_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    u8 = (torch.rand(6, 3, 9, 9, generator=gen(3)) ** 2 * 200).to(torch.uint8)
    u8[0, 0] = 17  # a constant channel: step 0, unchanged
    ours = A.equalize(u8.float() / 255)
    assert torch.allclose(ours, tvf.equalize(u8).float() / 255, atol=1e-6)


def test_intensity_ops_act_on_pixel_values_of_normalised_inputs():
    """Solarize at M=30 inverts every non-black pixel, computed on the true [0, 1] scale."""
    u8 = torch.randint(0, 256, (8, 1, 6, 6), generator=gen(1))
    u8[0, 0, 0, 0], u8[0, 0, 0, 1] = 0, 255
    mean, std = 0.13, 0.31
    x = (u8.float() / 255 - mean) / std
    xo, _ = A.RandAugment(ctx(), num_ops=1, magnitude=30, ops=("solarize",))(x, torch.zeros(8, dtype=torch.long), gen())
    u = u8.float() / 255
    expected = (torch.where(u > 0, 1 - u, u) - mean) / std
    assert torch.allclose(xo, expected, atol=1e-5)


def test_randaugment_ops_differ_per_sample_and_paths_agree():
    x = torch.rand(1, 3, 16, 16, generator=gen(0)).repeat(32, 1, 1, 1)
    x[0, :, 0, 0], x[0, :, 0, 1] = 0.0, 1.0
    aug = A.RandAugment(ctx(), num_ops=2, magnitude=15)
    xo, _ = aug(x, torch.zeros(32, dtype=torch.long), gen(4))
    distinct = {tuple(row.flatten().tolist()) for row in xo.round(decimals=4)}
    assert len(distinct) > 10  # the same image, different ops per sample
    aug.subset = False  # the whole-batch torch.where path used on accelerators
    xw, _ = aug(x, torch.zeros(32, dtype=torch.long), gen(4))
    assert torch.allclose(xo, xw, atol=1e-6)


def test_randaugment_rejects_unknown_ops():
    with pytest.raises(ValueError, match="unknown ops"):
        A.RandAugment(ctx(), num_ops=2, magnitude=9, ops=("identity", "warp_drive"))


# ---------------------------------------------------------------------------------------------
# rankmixup
# ---------------------------------------------------------------------------------------------


def test_rankmixup_returns_raw_batch_then_mixes():
    x, y, _ = batch()
    aug = build("rankmixup")
    xo, yo = aug(x, y, gen())
    assert aug.num_mixup == 3 and torch.equal(xo[: len(x)], x)
    assert torch.equal(yo[: len(x)], nn.functional.one_hot(y, K).float())
    assert build("rankmixup", variant="mrl").num_mixup == 1


def softmax_max(row: list[float]) -> float:
    e = [math.exp(v) for v in row]
    return max(e) / sum(e)


def test_rankmixup_mndcg_hand_computed():
    aug = A.RANKMIXUP.create(ctx(2), variant="mndcg", num_mixup=2, weight=0.1)
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # raw, mix 1, mix 2 (one raw sample)
    targets = torch.tensor([[1.0, 0.0], [0.4, 0.6], [0.7, 0.3]])  # relevances 1, 0.6, 0.7
    c0, c1, c2 = softmax_max([2, 0]), softmax_max([1, 0]), 0.5
    # sorted by relevance: raw (1), mix 2 (0.7), mix 1 (0.6); discounts log2(2), log2(3), log2(4)
    dcg = c0 / 1 + c2 / math.log2(3) + c1 / 2
    idcg = 1 / 1 + 0.7 / math.log2(3) + 0.6 / 2
    ndcg = dcg / idcg if idcg > dcg else idcg / dcg
    assert math.isclose(float(aug.loss_term(logits, targets)), 0.1 * (1 - ndcg), rel_tol=1e-5)


def test_rankmixup_mndcg_is_zero_when_confidences_equal_relevances():
    aug = A.RANKMIXUP.create(ctx(2), variant="mndcg", num_mixup=1, weight=1.0)
    p = 0.8
    logits = torch.tensor([[30.0, 0.0], [math.log(p / (1 - p)), 0.0]])  # confidences ~1 and 0.8
    targets = torch.tensor([[1.0, 0.0], [0.8, 0.2]])
    assert float(aug.loss_term(logits, targets)) < 1e-6


def test_rankmixup_mrl_hand_computed_and_zero_beyond_margin():
    aug = A.RANKMIXUP.create(ctx(2), variant="mrl", num_mixup=1, weight=0.1, margin=2.0)
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 2.0], [0.5, 0.0]])  # raw 0, raw 1, mix 0, mix 1
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [1.0, 0.0]])  # mix 1: same-class pair, masked
    # mix 0: relu(max(1, 2) - max(3, 0) + 2) = 1; mix 1 masked -> mean over 2 mixed rows
    assert math.isclose(float(aug.loss_term(logits, targets)), 0.1 * (1.0 + 0.0) / 2, rel_tol=1e-6)
    far = torch.tensor([[9.0, 0.0], [0.0, 9.0], [1.0, 2.0], [0.5, 0.0]])
    assert float(aug.loss_term(far, targets)) == 0.0


# ---------------------------------------------------------------------------------------------
# decoupled_mixup
# ---------------------------------------------------------------------------------------------


def test_decoupled_regulariser_hand_computed():
    aug = A.DECOUPLED_MIXUP.create(ctx(4), alpha=1.0, eta=0.1)
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]])
    targets = torch.tensor([[0.3, 0.7, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])  # row 2 is not mixed: no term
    rest = math.exp(0.5) + math.exp(-1.0)
    term = -math.log(math.e / (math.e + rest)) - math.log(math.exp(2) / (math.exp(2) + rest))
    assert math.isclose(float(aug.loss_term(logits, targets)), 0.1 * term / 2, rel_tol=1e-6)


def test_decoupled_regulariser_vanishes_without_mixed_rows_and_with_eta_zero():
    logits = torch.randn(4, K)
    onehot = nn.functional.one_hot(torch.arange(4), K).float()
    assert float(A.DECOUPLED_MIXUP.create(ctx(), eta=0.1).loss_term(logits, onehot)) == 0.0
    assert float(A.DECOUPLED_MIXUP.create(ctx(), eta=0.1).loss_term(logits, torch.arange(4))) == 0.0
    mixed = 0.5 * onehot + 0.5 * onehot.roll(1, dims=0)
    assert float(A.DECOUPLED_MIXUP.create(ctx(), eta=0.0).loss_term(logits, mixed)) == 0.0


def test_decoupled_regulariser_with_every_class_mixed_is_zero():
    # S = all classes: nothing left in the decoupled denominator, each phi = 1
    assert float(A.decoupled_regulariser(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]]))) == 0.0


# ---------------------------------------------------------------------------------------------
# sla
# ---------------------------------------------------------------------------------------------


def test_sla_rotations_and_joint_labels():
    x, y, ys = batch(b=3, size=6)
    aug = build("sla")
    xo, yo = aug(x, y, gen())
    b = len(x)
    for r in range(4):
        assert torch.equal(xo[r * b : (r + 1) * b], torch.rot90(x, r, dims=(2, 3)))
        assert torch.equal(yo[r * b : (r + 1) * b], y * 4 + r)
    assert torch.equal(xo[b + 1, 0], x[1, 0].rot90(1))  # sample 1, r = 1
    _, yso = aug(x, ys, gen())
    for r in range(4):
        for k in range(K):
            assert torch.equal(yso[r * b : (r + 1) * b, k * 4 + r], ys[:, k])
    assert aug.label_multiplier == 4


def test_sla_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        build("sla")(torch.zeros(2, 1, 4, 6), torch.zeros(2, dtype=torch.long), gen())


def test_sla_model_trains_joint_head_and_aggregates_in_eval():
    torch.manual_seed(0)
    aug = build("sla")
    model = aug.prepare_model(SmallCNN(K, 1, 12), K)
    head = get_classifier(model)
    assert isinstance(head, nn.Linear) and head.out_features == 4 * K
    x = torch.randn(3, 1, 12, 12)
    model.train()
    assert model(x).shape == (3, 4 * K)
    model.eval()
    with torch.no_grad():
        out = model(x)
        expected = torch.zeros(3, K)
        for r in range(4):
            z = model.net(torch.rot90(x, r, dims=(2, 3)))  # [3, 4K] joint logits of rotation r
            for k in range(K):
                expected[:, k] += z[:, k * 4 + r] / 4
    assert out.shape == (3, K) and torch.allclose(out, expected, atol=1e-5)


def test_sla_head_can_still_be_swapped_by_a_loss():
    from harness.models import set_classifier

    model = build("sla").prepare_model(SmallCNN(K, 1, 12), K)
    new = nn.Linear(get_classifier(model).in_features, 4 * K)
    set_classifier(model, new)
    assert get_classifier(model) is new and model.net.classifier is new


# ---------------------------------------------------------------------------------------------
# end to end through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_runs_augmentations_on_long_tail(tmp_path):
    code, out, err = run_cli("run", "suite=long_tail", "method=mixup,ce+sla,randaugment", "epochs=1", "seeds=1", f"results={tmp_path}")
    assert code == 0, err
    for entry in ("ce+mixup", "ce+sla", "ce+randaugment"):
        assert entry in out
