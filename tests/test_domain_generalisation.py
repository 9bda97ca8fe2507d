"""Domain generalisation: DomainBed's datasets, the domain-balanced sampler, the leave-one-domain-out
protocol and its model selection, and each DomainBed method against a value computed by hand or a
limiting case."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.catalog import load_catalog
from harness.data import LoadOptions, load_mnist5k
from harness.engine import Normalizer, train
from harness.errors import HarnessError
from harness.seams import Batch, ModelShaper, Outputs, TrainContext
from harness.spec import build_grid
from harness.suite import RunContext
from harness.testing import run_cli
from harness_plugins import domain_data as D
from harness_plugins import domain_generalisation as G
from harness_suites import domain_generalisation as S

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def context(num_classes: int = 3, num_domains: int = 2, **changes) -> TrainContext:
    return TrainContext(num_classes, (10,) * num_classes, 40, 2, "cpu", 8, 5, 0, num_domains, 1, 4, **changes)


def build(name: str, ctx: TrainContext | None = None, **hp):
    return load_catalog().methods.get(name).create(ctx or context(), **hp)


def batch_of(logits_per_domain: list[torch.Tensor], labels_per_domain: list[list[int]], features: list[torch.Tensor] | None = None) -> tuple[Batch, Outputs]:
    logits = torch.cat(logits_per_domain)
    y = torch.tensor([c for labels in labels_per_domain for c in labels])
    domain = torch.cat([torch.full((len(labels),), d) for d, labels in enumerate(labels_per_domain)])
    batch = Batch(torch.zeros(len(y), 1, 4, 4), y, torch.arange(len(y)), domain)
    return batch, Outputs(logits, torch.cat(features) if features is not None else None)


class WithHead(nn.Module):
    """A model whose classifier is `head` (what a method that differentiates the head finds)."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.classifier = head


def load(loader):
    return loader(LoadOptions(cache_dir=Path("unused")))


@pytest.fixture(scope="module")
def rmnist():
    return load(D.load_rmnist)


@pytest.fixture(scope="module")
def cmnist():
    return load(D.load_cmnist)


def domainbed_split(n: int, env: int) -> tuple[list[int], list[int]]:
    """DomainBed's misc.split_dataset(env, int(n * 0.2), misc.seed_hash(0, env)), written out."""
    seed = int(hashlib.md5(str((0, env)).encode("utf-8")).hexdigest(), 16) % (2**31)
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    return keys[int(n * 0.2):], keys[: int(n * 0.2)]


# ---------------------------------------------------------------------------------------------
# datasets: DomainBed's construction rules
# ---------------------------------------------------------------------------------------------


def mnist_environments(count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    mnist = load(load_mnist5k)
    images = torch.cat([mnist.train_x, mnist.test_x])[:, 0]
    labels = torch.cat([mnist.train_y, mnist.test_y])
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return [images[perm][i::count] for i in range(count)], [labels[perm][i::count] for i in range(count)]


def test_rotated_mnist_follows_domainbed(rmnist):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import rotate, to_pil_image

    assert rmnist.domains == ("0", "15", "30", "45", "60", "75") and rmnist.num_classes == 10
    assert tuple(rmnist.train_x.shape[1:]) == (1, 28, 28) and len(rmnist.train_y) + len(rmnist.test_y) == 5000
    envs, labels = mnist_environments(6)
    for d, angle in enumerate((0, 15, 30, 45, 60, 75)):
        keep_in, keep_out = domainbed_split(len(labels[d]), d)
        assert torch.equal(rmnist.train_y[rmnist.train_domain == d], labels[d][keep_in])
        assert torch.equal(rmnist.test_y[rmnist.test_domain == d], labels[d][keep_out])
        first = envs[d][keep_in[0]]
        expected = np.asarray(rotate(to_pil_image(first), angle, fill=(0,), interpolation=InterpolationMode.BILINEAR))
        assert np.array_equal(rmnist.train_x[rmnist.train_domain == d][0, 0].numpy(), expected)
    # 0 degrees is the digit itself; 45 degrees is not
    assert torch.equal(rmnist.train_x[rmnist.train_domain == 0][0, 0], envs[0][domainbed_split(len(labels[0]), 0)[0][0]])
    assert not torch.equal(rmnist.train_x[rmnist.train_domain == 3][0, 0], envs[3][domainbed_split(len(labels[3]), 3)[0][0]])


def test_colored_mnist_follows_domainbed(cmnist):
    assert cmnist.domains == ("+90%", "+80%", "-90%") and cmnist.num_classes == 2
    assert tuple(cmnist.train_x.shape[1:]) == (2, 28, 28)
    envs, digits = mnist_environments(3)
    for d, agreement in enumerate((0.9, 0.8, 0.1)):
        keep_in, _ = domainbed_split(len(digits[d]), d)
        x, y = cmnist.train_x[cmnist.train_domain == d], cmnist.train_y[cmnist.train_domain == d]
        grey = envs[d][keep_in]
        red, green = x[:, 0], x[:, 1]
        # the image goes to one channel, the other is zeroed
        assert torch.equal(red + green, grey.to(red.dtype)) and not bool(((red > 0) & (green > 0)).any())
        colour = (green.flatten(1).sum(1) > 0).long()
        clean = (digits[d][keep_in] < 5).long()
        assert abs(float((y == clean).float().mean()) - 0.75) < 0.05  # 25% label noise
        assert abs(float((colour == y).float().mean()) - agreement) < 0.05  # colour agrees with the noisy label


def test_in_out_split_is_domainbeds():
    keep_in, keep_out = D.in_out_split(833, 4)
    expected_in, expected_out = domainbed_split(833, 4)
    assert keep_in.tolist() == expected_in and keep_out.tolist() == expected_out and len(keep_out) == int(833 * 0.2)


def write_tree(root: Path, domains: list[str], classes: list[str], per_class: int = 2) -> None:
    from PIL import Image

    for d, domain in enumerate(domains):
        for c, cls in enumerate(classes):
            (root / domain / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (12 + i, 10), (40 * d, 60 * c, 7 * i)).save(root / domain / cls / f"{i}.png")


def test_domainbed_folder_datasets_load_the_official_layout(tmp_path, monkeypatch):
    write_tree(tmp_path / "PACS", ["art_painting", "cartoon", "photo", "sketch"], ["dog", "elephant", "giraffe"])
    monkeypatch.setenv("HARNESS_DOMAINBED_DATA", str(tmp_path))
    data = load_catalog().dataset("pacs").load(LoadOptions(cache_dir=tmp_path / "cache"))
    assert isinstance(data, D.DomainSplits)
    assert data.domains == ("A", "C", "P", "S") and data.classes == ("dog", "elephant", "giraffe")
    assert tuple(data.train_x.shape[1:]) == (3, 224, 224)
    assert torch.bincount(data.train_domain).tolist() == [6 - int(6 * 0.2)] * 4 and torch.bincount(data.test_domain).tolist() == [int(6 * 0.2)] * 4
    # photo (third domain), giraffe (third class): the colour written for it, resized
    rows = (data.train_domain == 2) & (data.train_y == 2)
    assert data.train_x[rows][0, :, 100, 100].tolist()[:2] == [80, 120]


# each dataset's folder and domain folders as DomainBed's scripts/download.py leaves them, and
# DomainBed's ENVIRONMENTS (datasets.py), the names the domains must get in sorted folder order
DOMAINBED_LAYOUTS = {
    "pacs": ("PACS", ["art_painting", "cartoon", "photo", "sketch"], ("A", "C", "P", "S")),
    "vlcs": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], ("C", "L", "S", "V")),
    "office_home": ("office_home", ["Art", "Clipart", "Product", "Real World"], ("A", "C", "P", "R")),
    "terra_incognita": ("terra_incognita", ["location_100", "location_38", "location_43", "location_46"], ("L100", "L38", "L43", "L46")),
    "domainnet": ("domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"], ("clip", "info", "paint", "quick", "real", "sketch")),
}


@pytest.mark.parametrize("name", sorted(DOMAINBED_LAYOUTS))
def test_every_domainbed_folder_dataset_reads_its_download_layout(tmp_path, monkeypatch, name):
    from PIL import Image

    folder, domain_folders, environments = DOMAINBED_LAYOUTS[name]
    # written in shuffled order: the domains must come out in sorted folder order, as DomainBed's
    for d in reversed(range(len(domain_folders))):
        for cls in ["bird", "ant"]:  # classes are sorted too: ant = 0, bird = 1
            c = ["ant", "bird"].index(cls)
            target = tmp_path / folder / domain_folders[d] / cls
            (target / "nested").mkdir(parents=True)
            for i in range(5):  # ImageFolder also finds images in subfolders and skips other files
                Image.new("RGB", (9, 7), (10 * d, 100 * c, 3 * i)).save(target / ("nested" if i == 4 else ".") / f"{i}.PNG")  # lossless, so the colours survive
            (target / "notes.txt").write_text("not an image")
    monkeypatch.setenv("HARNESS_DOMAINBED_DATA", str(tmp_path))
    data = load_catalog().dataset(name).load(LoadOptions(cache_dir=tmp_path / "cache"))
    assert isinstance(data, D.DomainSplits) and data.domains == environments and data.classes == ("ant", "bird")
    assert tuple(data.train_x.shape[1:]) == (3, 224, 224) and data.train_x.dtype == torch.uint8
    per_domain = 10  # 2 classes x 5 images
    assert torch.bincount(data.train_domain).tolist() == [per_domain - int(per_domain * 0.2)] * len(environments)
    for d in range(len(environments)):  # every image in its own domain, class and in/out split (DomainBed's split of 10 rows)
        keep_in, _ = domainbed_split(per_domain, d)
        labels = torch.tensor([0] * 5 + [1] * 5)[keep_in]
        rows = data.train_domain == d
        assert torch.equal(data.train_y[rows], labels)
        assert data.train_x[rows][:, 0, 0, 0].tolist() == [10 * d] * len(keep_in)  # red channel: the domain
        assert data.train_x[rows][:, 1, 0, 0].tolist() == (100 * labels).tolist()  # green channel: the class


def test_folder_dataset_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DOMAINBED_DATA", str(tmp_path))
    with pytest.raises(HarnessError) as missing:
        load_catalog().dataset("vlcs").load(LoadOptions(cache_dir=tmp_path))
    assert "\n" not in str(missing.value) and str(tmp_path / "VLCS") in str(missing.value) and "domainbed.scripts.download" in str(missing.value)
    write_tree(tmp_path / "office_home", ["Art", "Clipart", "Product"], ["Bike"])
    with pytest.raises(HarnessError, match="3 domain folders"):
        load_catalog().dataset("office_home").load(LoadOptions(cache_dir=tmp_path))
    write_tree(tmp_path / "terra_incognita", ["location_100", "location_38", "location_43", "location_46"], ["bird"])
    (tmp_path / "terra_incognita" / "location_46" / "cat").mkdir()
    with pytest.raises(HarnessError, match="same class folders"):
        load_catalog().dataset("terra_incognita").load(LoadOptions(cache_dir=tmp_path))


# ---------------------------------------------------------------------------------------------
# the domain-balanced sampler
# ---------------------------------------------------------------------------------------------


def test_every_batch_holds_one_minibatch_per_domain():
    domains = torch.tensor([0] * 10 + [1] * 7 + [2] * 13)
    sampler = D.DomainBalancedSampler(domains, per_domain=4)
    assert sampler.batch_size == 12 and sampler.steps == math.ceil(30 / 12)
    order = sampler.epoch_plan(0, torch.Generator().manual_seed(0)).order
    assert len(order) == sampler.steps * 12
    for step in order.view(sampler.steps, 12):
        assert domains[step].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    draws = order.view(sampler.steps, 3, 4)[:, 0].flatten()  # domain 0: 12 draws of its 10 rows
    assert sorted(draws[:10].tolist()) == list(range(10))  # a whole pass before any row repeats
    batch = Batch(torch.zeros(12, 1, 2, 2), torch.zeros(12, dtype=torch.long), order[:12], domains[order[:12]])
    assert [len(b) for b in batch.by_domain()] == [4, 4, 4]


# ---------------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------------


def test_leave_one_out_splits(rmnist):
    split = S.leave_out(rmnist, 2)
    assert split.training_domains == (0, 1, 3, 4, 5)
    assert len(split.train_y) == int((rmnist.train_domain != 2).sum()) and split.train_domain.unique().tolist() == [0, 1, 2, 3, 4]
    assert [len(y) for _, y in split.val] == [166] * 5  # the training domains' out splits
    assert torch.equal(split.test_in[1], rmnist.train_y[rmnist.train_domain == 2])
    assert torch.equal(split.test_out[1], rmnist.test_y[rmnist.test_domain == 2])
    lodo = S.leave_out(rmnist, 2, also=(4,))
    assert lodo.training_domains == (0, 1, 3, 5)
    assert S.held_out_domains("all", rmnist) == [0, 1, 2, 3, 4, 5] and S.held_out_domains("5", rmnist) == [5]
    with pytest.raises(HarnessError, match=r"valid: 0 \(0\), 1 \(15\)"):
        S.held_out_domains("6", rmnist)


def small_cmnist(cmnist, per_domain: int = 120):
    """The first rows of every domain of Colored MNIST: a few seconds of training."""
    def take(x, y, d, n):
        rows = torch.cat([torch.nonzero(d == k).flatten()[:n] for k in range(3)])
        return x[rows], y[rows], d[rows]

    train_x, train_y, train_domain = take(cmnist.train_x, cmnist.train_y, cmnist.train_domain, per_domain)
    test_x, test_y, test_domain = take(cmnist.test_x, cmnist.test_y, cmnist.test_domain, per_domain // 4)
    return dataclasses.replace(cmnist, train_x=train_x, train_y=train_y, train_domain=train_domain, test_x=test_x, test_y=test_y, test_domain=test_domain)


def held_out_run(tmp_path, data, selection: str, held_out: int = 2):
    catalog = load_catalog()
    _, specs = build_grid(catalog, {"suite": "domain_generalisation", "method": "erm", "dataset": "cmnist", "epochs": "4", "seed": "0", "selection": selection})
    ctx = RunContext(spec=specs[0], catalog=catalog, cache_dir=tmp_path, device="cpu")
    return S.run_held_out(ctx, data, held_out, selection)


def corrupt_held_out(data, held_out: int):
    """Every image and label of the held-out domain (both splits) replaced by noise."""
    g = torch.Generator().manual_seed(7)

    def noise(x, y, d):
        rows = d == held_out
        x, y = x.clone(), y.clone()
        x[rows] = torch.randint(0, 256, x[rows].shape, dtype=torch.uint8, generator=g)
        y[rows] = torch.randint(0, 2, (int(rows.sum()),), generator=g)
        return x, y

    train_x, train_y = noise(data.train_x, data.train_y, data.train_domain)
    test_x, test_y = noise(data.test_x, data.test_y, data.test_domain)
    return dataclasses.replace(data, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


@pytest.mark.parametrize("selection", ["training_domain", "lodo"])
def test_selection_never_reads_the_held_out_domain(tmp_path, cmnist, selection):
    data = small_cmnist(cmnist)
    clean = held_out_run(tmp_path, data, selection)
    corrupted = held_out_run(tmp_path, corrupt_held_out(data, 2), selection)
    assert (clean.epoch, clean.curve, clean.val_acc) == (corrupted.epoch, corrupted.curve, corrupted.val_acc)
    assert clean.acc != corrupted.acc  # the held-out domain is read: for the reported accuracy only
    assert len(clean.curve) == 4 and 1 <= clean.epoch <= 4


def test_the_oracle_reads_the_held_out_domain(tmp_path, cmnist):
    data = small_cmnist(cmnist)
    clean = held_out_run(tmp_path, data, "oracle")
    corrupted = held_out_run(tmp_path, corrupt_held_out(data, 2), "oracle")
    assert clean.curve != corrupted.curve
    assert clean.val_acc == max(clean.curve) and clean.epoch == clean.curve.index(max(clean.curve)) + 1


# ---------------------------------------------------------------------------------------------
# methods: values by hand and limiting cases
# ---------------------------------------------------------------------------------------------


def test_erm_is_cross_entropy_of_the_concatenated_minibatches():
    batch, out = batch_of([torch.randn(3, 3), torch.randn(3, 3)], [[0, 1, 2], [2, 2, 0]])
    assert torch.allclose(build("erm").objective(batch, out), F.cross_entropy(out.logits, batch.y))
    assert torch.allclose(build("erm").objective(batch, out), build("ce").objective(batch, out))


def test_irm_penalty_by_hand():
    logits, y = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 1.0, 1.0], [2.0, 0.0, -1.0]]), torch.tensor([1, 2, 0, 0])

    def scale_gradient(z, labels):  # d/ds CE(s z, y) at s = 1 = mean_i (sum_c p_ic z_ic - z_iy)
        p = torch.softmax(z, 1)
        return ((p * z).sum(1) - z[torch.arange(len(labels)), labels]).mean()

    expected = scale_gradient(logits[::2], y[::2]) * scale_gradient(logits[1::2], y[1::2])
    assert torch.allclose(G.irm_penalty(logits, y), expected, atol=1e-6)
    batch, out = batch_of([logits, logits.flip(0)], [y.tolist(), y.flip(0).tolist()])
    irm = build("irm", lam=7.0, anneal_iters=0)
    nll = (F.cross_entropy(logits, y) + F.cross_entropy(logits.flip(0), y.flip(0))) / 2
    penalty = (G.irm_penalty(logits, y) + G.irm_penalty(logits.flip(0), y.flip(0))) / 2
    assert torch.allclose(irm.objective(batch, out), (nll + 7.0 * penalty) / 7.0, atol=1e-6)  # rescaled by the weight (IRM's code)
    assert torch.allclose(build("irm", lam=7.0, anneal_iters=5).objective(batch, out), nll + 1.0 * penalty, atol=1e-6)  # weight 1 before the anneal


def test_vrex_is_mean_plus_variance_of_domain_risks():
    logits = [torch.randn(4, 3), torch.randn(4, 3)]
    labels = [[0, 1, 2, 0], [1, 1, 2, 2]]
    batch, out = batch_of(logits, labels)
    l1, l2 = (F.cross_entropy(z, torch.tensor(y)) for z, y in zip(logits, labels))
    assert torch.allclose(build("vrex", lam=10.0, anneal_iters=0).objective(batch, out), ((l1 + l2) / 2 + 10.0 * ((l1 - l2) / 2) ** 2) / 10.0)
    assert torch.allclose(build("vrex", lam=0.0, anneal_iters=0).objective(batch, out), build("erm").objective(batch, out))  # balanced: ERM


def test_coral_penalty_by_hand():
    f1 = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 1.0]])
    f2 = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    batch, out = batch_of([torch.zeros(3, 3), torch.zeros(3, 3)], [[0, 1, 2], [0, 1, 2]], [f1, f2])
    mean_diff = ((np.array([2.0, 1.0]) - np.array([1.0, 1.0])) ** 2).mean()
    cov_diff = ((np.cov(f1.numpy().T) - np.cov(f2.numpy().T)) ** 2).mean()  # numpy's cov is unbiased
    coral = build("coral", gamma=2.0)
    assert coral.objective(batch, out).item() == pytest.approx(math.log(3) + 2.0 * (mean_diff + cov_diff), rel=1e-5)


def test_mmd_by_hand():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.3, 0.4]])  # ||x - y||^2 = 0.25
    expected = 7 + 7 - 2 * sum(math.exp(-g * 0.25) for g in G.MMD_GAMMAS)  # exp(-g * 1e-30) = 1 on the diagonal
    assert G.mmd_distance(x, y).item() == pytest.approx(expected, rel=1e-5)
    z = torch.randn(5, 2)
    assert G.mmd_distance(z, z).item() == pytest.approx(0.0, abs=1e-5)


def test_groupdro_weights_by_hand():
    logits = [torch.zeros(2, 3), torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])]
    batch, out = batch_of(logits, [[0, 1], [1, 2]])
    l1, l2 = math.log(3), -math.log(1 / (math.exp(3) + 2))
    dro = build("groupdro", eta=0.5)
    loss = dro.objective(batch, out)
    q = np.array([math.exp(0.5 * l1), math.exp(0.5 * l2)])
    q /= q.sum()
    assert dro.q.tolist() == pytest.approx(q.tolist(), rel=1e-5)
    assert loss.item() == pytest.approx(q[0] * l1 + q[1] * l2, rel=1e-5)
    out.recomputed = True  # an extra pass of the same step: weights unchanged
    dro.objective(batch, out)
    assert dro.q.tolist() == pytest.approx(q.tolist(), rel=1e-5)


def test_domain_mixup_mixes_pairs_of_domains_as_domainbed():
    mix = build("domain_mixup", alpha=0.2)
    x = torch.cat([torch.full((2, 1, 4, 4), 1.0), torch.full((3, 1, 4, 4), 5.0)])
    y = torch.tensor([0, 1, 2, 2, 2])
    batch = Batch(x, y, torch.arange(5), torch.tensor([0, 0, 1, 1, 1]))
    g = torch.Generator().manual_seed(3)
    mixed = mix.transform(batch, g)
    replay = torch.Generator().manual_seed(3)  # the same draws: the pairing order, then one lam per pair
    order = torch.randperm(2, generator=replay).tolist()
    lams = G.beta_sample(0.2, 2, replay)
    assert len(mixed) == 4 and (mixed.index == -1).all()  # two pairs of min(2, 3) rows
    for k, lam in enumerate(lams):
        i, j = order[k], order[(k + 1) % 2]
        value = lam * (1.0 if i == 0 else 5.0) + (1 - lam) * (1.0 if j == 0 else 5.0)
        assert torch.allclose(mixed.x[2 * k : 2 * k + 2], torch.full((2, 1, 4, 4), value))
        assert int(mixed.domain[2 * k]) == i
    logits = torch.randn(4, 3)
    out = Outputs(logits)
    by_hand = 0.0
    for k, lam in enumerate(lams):  # DomainBed: sum over pairs of lam CE(yi) + (1 - lam) CE(yj), over the domain count
        i, j = order[k], order[(k + 1) % 2]
        yi, yj = ([0, 1] if i == 0 else [2, 2]), ([0, 1] if j == 0 else [2, 2])
        z = logits[2 * k : 2 * k + 2]
        by_hand += lam * F.cross_entropy(z, torch.tensor(yi)) + (1 - lam) * F.cross_entropy(z, torch.tensor(yj))
    assert torch.allclose(mix.objective(mixed, out), by_hand / 2, atol=1e-6)


def test_fishr_per_sample_gradients_match_autograd():
    head = nn.Linear(3, 4)
    features, y = torch.randn(5, 3), torch.tensor([0, 3, 1, 1, 2])
    grads = G.per_sample_head_gradients(features, head(features), y, head)
    for i in range(5):
        w, b = torch.autograd.grad(F.cross_entropy(head(features[i : i + 1]), y[i : i + 1]), [head.weight, head.bias])
        assert torch.allclose(grads["weight"][i], w.flatten(), atol=1e-6) and torch.allclose(grads["bias"][i], b, atol=1e-6)


def test_fishr_penalty_by_hand_and_without_it():
    ctx = context(num_classes=2)
    fishr = build("fishr", ctx, lam=3.0, anneal_iters=0, ema=0.5)
    head = nn.Linear(2, 2)
    fishr.prepare_model(WithHead(head))
    f = [torch.randn(3, 2), torch.randn(3, 2)]
    batch, out = batch_of([head(f[0]), head(f[1])], [[0, 1, 1], [1, 0, 0]], f)
    loss = fishr.objective(batch, out)
    flat = torch.cat(list(G.per_sample_head_gradients(out.features, out.logits, batch.y, head).values()), 1)
    v = [flat[:3].var(0, unbiased=False), flat[3:].var(0, unbiased=False)]  # first update: the average is the variance itself
    mean = (v[0] + v[1]) / 2
    penalty = (((v[0] - mean) ** 2).mean() + ((v[1] - mean) ** 2).mean()) / 2
    assert torch.allclose(loss, (F.cross_entropy(out.logits, batch.y) + 3.0 * penalty) / 3.0, atol=1e-6)
    erm_like = build("fishr", ctx, lam=3.0, anneal_iters=10, ema=0.5)
    erm_like.prepare_model(WithHead(head))
    assert torch.allclose(erm_like.objective(batch, out), F.cross_entropy(out.logits, batch.y))  # no penalty before the anneal


def test_hessian_gradient_product_is_the_heads_hessian_times_gradient():
    torch.manual_seed(0)
    features, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, 0, 2])
    head = nn.Linear(3, 3)
    params = list(head.parameters())
    grads = torch.autograd.grad(F.cross_entropy(head(features), y), params, create_graph=True)
    norm = G.flat(grads).norm()
    hg = build("hgp").hessian_term(grads, norm, params, [])

    def risk(flat_params):
        w, b = flat_params[:9].view(3, 3), flat_params[9:]
        return F.cross_entropy(features @ w.t() + b, y)

    theta = torch.cat([p.detach().flatten() for p in params])
    hessian = torch.autograd.functional.hessian(risk, theta)
    assert torch.allclose(hg, hessian @ G.flat(grads).detach(), atol=1e-5)
    hutchinson = build("hutchinson", probes=4)
    hutchinson.prepare_model(WithHead(head))
    directions = torch.randn(4, 12)
    products = G.head_hessian_products(features, head(features), directions[:, :9].view(4, 3, 3), directions[:, 9:])
    assert torch.allclose(products, directions @ hessian, atol=1e-5)  # the closed form is the exact Hessian-vector product
    hutchinson.probes = 20000
    diag = hutchinson.hessian_term(grads, norm, params, [(features, head(features))])
    assert torch.allclose(diag, torch.diagonal(hessian), atol=0.02)


@pytest.mark.parametrize("name", ["hgp", "hutchinson"])
def test_hessian_alignment_is_erm_when_domains_agree(name):
    # Hutchinson draws fresh probes for each domain, so its Hessian estimates agree only in expectation: alpha = 0
    method = build(name, alpha=1.0, beta=1.0) if name == "hgp" else build(name, alpha=0.0, beta=1.0, probes=10)
    method.prepare_model(WithHead(nn.Linear(2, 3)))
    f = torch.randn(4, 2)
    batch, out = batch_of([method.head(f), method.head(f)], [[0, 1, 2, 0], [0, 1, 2, 0]], [f, f])
    assert torch.allclose(method.objective(batch, out), F.cross_entropy(method.head(f), batch.y[:4]), atol=1e-6)


def two_domain_data(n: int = 48):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, torch.arange(n) % 2


RECIPE = {"epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 0,
          "milestones": [], "lr_decay": 0.1, "crop_flip": False}


def train_with(parts, seed: int = 0, model: nn.Module | None = None):
    from harness.models import SmallCNN

    x, y, domains = two_domain_data()
    torch.manual_seed(seed)
    model = model or SmallCNN(3, 1, 8, width=8)
    for p in parts:
        if isinstance(p, ModelShaper):
            model = p.shape_model(model, ctx_for_training())
    sampler = D.DomainBalancedSampler(domains, RECIPE["batch_size"] // 2)
    train(model, x, y, recipe=RECIPE, parts=[*parts, sampler], normalizer=Normalizer.fit(x), seed=seed, device="cpu", domains=domains)
    return model


def ctx_for_training(num_domains: int = 2) -> TrainContext:
    return TrainContext(3, (16, 16, 16), 48, 2, "cpu", 16, 3, 0, num_domains, 1, 8)


def same_weights(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> bool:
    """Parameters and floating-point buffers (BatchNorm's step counters aside) agree."""
    pairs = zip(a.state_dict().values(), b.state_dict().values())
    return all(torch.allclose(p, q, atol=atol, rtol=0) for p, q in pairs if p.is_floating_point())


def test_irm_without_penalty_is_erm_step_for_step():
    ctx = ctx_for_training()
    erm = train_with([build("erm", ctx)])
    irm = train_with([build("irm", ctx, lam=0.0, anneal_iters=0)])
    assert same_weights(erm, irm)
    irm_penalised = train_with([build("irm", ctx, lam=100.0, anneal_iters=0)])
    assert not same_weights(erm, irm_penalised)


def test_irm_resets_momentum_at_the_anneal():
    irm = build("irm", ctx_for_training(), lam=1.0, anneal_iters=2)
    sgd = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1, momentum=0.9)
    momentum_at_step = []

    def default_step(batch):  # the engine's default step: one SGD step with a unit gradient
        momentum_at_step.append(sum(len(s) for s in sgd.state.values()))
        sgd.param_groups[0]["params"][0].grad = torch.ones(1)
        sgd.step()
        return torch.zeros(())

    tools = dataclasses.make_dataclass("Tools", ["optimizer", "default_step"])(sgd, default_step)
    for _ in range(4):
        irm.train_step(None, tools)
    assert momentum_at_step == [0, 1, 0, 1]  # the momentum buffer is gone at update 2 (the anneal), as DomainBed's fresh Adam


def test_fish_meta_step_zero_keeps_the_weights_and_one_is_sequential_sgd():
    ctx = ctx_for_training()
    from harness.models import SmallCNN

    torch.manual_seed(0)
    start = SmallCNN(3, 1, 8, width=8)
    frozen = train_with([build("fish", ctx, meta_lr=0.0)], model=copy.deepcopy(start))
    assert same_weights(frozen, start, atol=0)  # parameters and BatchNorm statistics interpolated back
    # meta_lr 1: one inner SGD step per domain minibatch, the domains in turn, is the whole update
    fish = build("fish", ctx, meta_lr=1.0)
    x, y, domains = two_domain_data()
    model = copy.deepcopy(start)
    sampler = D.DomainBalancedSampler(domains, 8)
    one_epoch = {**RECIPE, "epochs": 1, "lr": 0.1, "momentum": 0.0, "schedule": "step", "milestones": []}
    normalizer = Normalizer.fit(x)
    train(model, x, y, recipe=one_epoch, parts=[fish, sampler], normalizer=normalizer, seed=0, device="cpu", domains=domains)
    by_hand = copy.deepcopy(start)
    by_hand.train()
    order = sampler.epoch_plan(0, torch.Generator().manual_seed(0)).order
    sgd = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    for step in order.view(-1, 16):
        for d in (0, 1):
            rows = step[domains[step] == d]
            sgd.zero_grad()
            F.cross_entropy(by_hand(normalizer(x[rows])), y[rows]).backward()
            sgd.step()
    assert same_weights(model, by_hand, atol=1e-5)


@pytest.mark.parametrize("name", ["groupdro", "irm", "fish"])
def test_sam_with_zero_radius_leaves_every_dg_method_unchanged(name):
    """SAM composes with the DG methods that keep state per step (GroupDRO's weights, IRM's update
    count) or own the step (Fish, IRM): at rho = 0 its second pass is the first, so training is the
    method's alone, step for step; a second weight update or step count per SAM pass would break it."""
    ctx = ctx_for_training()
    hp = {"groupdro": {"eta": 1.0}, "irm": {"lam": 10.0, "anneal_iters": 3}, "fish": {"meta_lr": 0.5}}[name]
    alone, method = build(name, ctx, **hp), build(name, ctx, **hp)
    plain = train_with([alone])
    with_sam = train_with([method, load_catalog().methods.get("sam").create(ctx, rho=0.0, adaptive=False)])
    assert same_weights(plain, with_sam, atol=1e-5)
    if name == "groupdro":
        assert torch.allclose(alone.q, method.q) and not torch.allclose(alone.q, torch.full_like(alone.q, 0.5))
    if name == "irm":
        assert alone.update_count == method.update_count == 6  # 2 epochs x 3 steps
    with_sam = train_with([build(name, ctx, **hp), load_catalog().methods.get("sam").create(ctx, rho=0.05, adaptive=False)])
    assert not same_weights(plain, with_sam)


def test_udim_without_inconsistency_is_sam():
    ctx = ctx_for_training()
    catalog = load_catalog()
    sam = train_with([build("erm", ctx), catalog.methods.get("sam").create(ctx, rho=0.05)])
    udim = train_with([build("erm", ctx), catalog.methods.get("udim").create(ctx, rho=0.05, rho_x=0.0, lam=0.0, sam_warmup_ratio=1000)])
    assert same_weights(sam, udim, atol=1e-5)  # the warm-up is SAM
    after_warmup = train_with([build("erm", ctx), catalog.methods.get("udim").create(ctx, rho=0.05, rho_x=0.0, lam=0.0, sam_warmup_ratio=1)])
    assert same_weights(sam, after_warmup, atol=1e-4)  # x~ = x and lam = 0: SAM's gradient alone


def test_udim_inconsistency_by_hand():
    head = nn.Linear(2, 2)
    features = torch.randn(4, 2)
    y = torch.tensor([0, 1, 0, 1])
    both = torch.cat([features, features])  # x~ = x: the variances agree, only the norm term is left
    out = Outputs(head(both), both)
    value = G.UDIM.inconsistency(out, torch.cat([y, y]), head, 4)
    grads = G.per_sample_head_gradients(features, head(features), y, head)
    expected = grads["weight"].pow(2).sum(1).mean() / 4 + grads["bias"].pow(2).sum(1).mean() / 2
    assert torch.allclose(value, expected, atol=1e-6)


def test_methods_see_one_domain_without_domain_labels():
    batch, out = batch_of([torch.randn(4, 3)], [[0, 1, 2, 0]])
    plain = dataclasses.replace(batch, domain=None)
    assert torch.allclose(build("vrex", lam=0.5, anneal_iters=0).objective(plain, out), F.cross_entropy(out.logits, batch.y))  # no variance


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------


def test_cli_run_and_leaderboard(tmp_path):
    code, out, err = run_cli("run", "suite=domain_generalisation", "method=erm,irm,sam", "dataset=cmnist", "epochs=1", "seeds=1", "test_domain=2",
                             f"results={tmp_path / 'r'}")
    assert code == 0, err
    assert "erm+sam" in out and "selection=training_domain,test_domain=2" in out
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").glob("*/result.json")]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    first = records[0]
    assert set(first["metrics"]) == {"acc", "worst_acc", "last_acc", "val_acc"}
    assert first["info"]["test_domains"] == ["-90%"] and first["info"]["per_test_domain"]["-90%"]["training_domains"] == ["+90%", "+80%"]


def test_cli_refuses_a_dataset_without_domains_and_an_unknown_domain(tmp_path):
    code, _, err = run_cli("run", "suite=domain_generalisation", "method=erm", "dataset=digits", "epochs=1", "seeds=1", f"results={tmp_path / 'r'}")
    assert code == 2 and "has no domain labels" in err and "rmnist" in err
    code, _, err = run_cli("run", "suite=domain_generalisation", "method=erm", "dataset=cmnist", "test_domain=3", "epochs=1", "seeds=1", f"results={tmp_path / 'r'}")
    assert code == 2 and "test_domain=3 is not a domain of cmnist" in err and "2 (-90%)" in err
