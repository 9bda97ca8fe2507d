"""Label noise: the generators suites corrupt training labels with, and what the noise did.

Every generator takes clean int64 labels and a numpy Generator (`noise_rng(seed, purpose)`, a
function of the run seed only, independent of the training RNG) and returns noisy labels; the
noisy-labels suite ranks methods under them and the unlearning suite's corrective protocol uses
the symmetric one.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# asymmetric flip pairs
# ---------------------------------------------------------------------------------------------

# Patrini et al., Making Deep Neural Networks Robust to Label Noise: a Loss Correction Approach,
# CVPR 2017, Sec. 6 (used unchanged by GCE, SCE, APL and ELR).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_PAIRS = (("truck", "automobile"), ("bird", "airplane"), ("deer", "horse"), ("cat", "dog"), ("dog", "cat"))
# Ma et al., Dimensionality-Driven Learning with Noisy Labels, ICML 2018 (and SCE, APL): MNIST.
MNIST_PAIRS = ((2, 7), (3, 8), (5, 6), (6, 5), (7, 1))


def asym_pairs(classes: tuple[str, ...], dataset: str) -> tuple[list[tuple[int, int]], str]:
    """(source, target) class-index pairs for asymmetric noise, and where they come from."""
    k = len(classes)
    names = tuple(c.strip().lower().replace(" ", "_") for c in classes)
    if names == CIFAR10_CLASSES:
        index = {c: i for i, c in enumerate(names)}
        return [(index[a], index[b]) for a, b in CIFAR10_PAIRS], "CIFAR-10 pairs of Patrini et al. 2017: truck->automobile, bird->airplane, deer->horse, cat<->dog"
    if k == 10 and (names == tuple(str(i) for i in range(10)) or "mnist" in dataset.lower() or dataset == "digits"):
        return list(MNIST_PAIRS), "MNIST pairs of Ma et al. 2018: 2->7, 3->8, 5<->6, 7->1"
    if k == 100 and ("cifar100" in dataset.lower().replace("-", "") or "cifar_100" in dataset.lower()):
        pairs = [(i, (i // 5) * 5 + (i % 5 + 1) % 5) for i in range(k)]
        return pairs, "CIFAR-100: each class to the next, circularly within blocks of 5 consecutive class indices (Patrini et al. 2017 code, as used by APL and ELR)"
    return [(i, (i + 1) % k) for i in range(k)], f"no known pair list for {dataset!r}: class i -> (i + 1) mod {k} (the circular flip of Patrini et al.)"


# ---------------------------------------------------------------------------------------------
# noise generators: clean labels [N] -> noisy labels [N], all randomness from `rng`
# ---------------------------------------------------------------------------------------------


def noise_rng(seed: int, purpose: str = "noisy_labels/noise") -> np.random.Generator:
    """The noise generator of a run seed for one purpose (a suite's noise draw): derived from the
    seed and the purpose, independent of training's RNG."""
    digest = hashlib.sha256(f"harness/{purpose}/{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def symmetric_noise(labels: torch.Tensor, num_classes: int, rate: float, rng: np.random.Generator) -> torch.Tensor:
    """Exactly round(rate * N) samples, chosen uniformly, get a label drawn uniformly from the K - 1 OTHER classes."""
    y = labels.numpy().copy()
    n = len(y)
    flip = rng.permutation(n)[: round(rate * n)]
    y[flip] = (y[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    return torch.from_numpy(y)


def asymmetric_noise(labels: torch.Tensor, pairs: list[tuple[int, int]], rate: float, rng: np.random.Generator) -> torch.Tensor:
    """In each source class a of (a, b), exactly round(rate * n_a) samples, chosen uniformly, get label b."""
    clean = labels.numpy()
    y = clean.copy()
    for a, b in pairs:
        members = np.flatnonzero(clean == a)
        chosen = rng.permutation(members)[: round(rate * len(members))]
        y[chosen] = b
    return torch.from_numpy(y)


def instance_noise(labels: torch.Tensor, features: torch.Tensor, num_classes: int, rate: float, rng: np.random.Generator, std: float = 0.1) -> torch.Tensor:
    """Instance-dependent noise of Xia et al., Part-dependent Label Noise, NeurIPS 2020 (Appendix,
    Algorithm 2 "instance-dependent label noise generation"; their code's get_instance_noisy_label):

    q_i ~ N(rate, std^2) truncated to [0, 1]; W ~ N(0, 1) of shape [K, D, K]; for sample i with
    label y and flattened features x_i: a = x_i W[y], a_y = -inf, row = q_i softmax(a), row_y = 1 - q_i;
    the noisy label is drawn from the row. The mean flip rate is E q = rate (for rate away from 0, 1).
    Features are pixels scaled to [0, 1].
    """
    from scipy.stats import truncnorm

    clean = labels.numpy()
    n = len(clean)
    lo, hi = (0.0 - rate) / std, (1.0 - rate) / std
    q = truncnorm.rvs(lo, hi, loc=rate, scale=std, size=n, random_state=rng)
    x = features.reshape(n, -1).double().div(255.0)
    w = torch.from_numpy(rng.standard_normal((num_classes, x.shape[1], num_classes)))
    scores = torch.empty(n, num_classes, dtype=torch.float64)
    for c in range(num_classes):
        rows = torch.from_numpy(np.flatnonzero(clean == c))
        if len(rows):
            scores[rows] = x[rows] @ w[c]
    idx = torch.from_numpy(clean)
    scores[torch.arange(n), idx] = float("-inf")
    probs = torch.softmax(scores, dim=1) * torch.from_numpy(q).unsqueeze(1)
    probs[torch.arange(n), idx] = torch.from_numpy(1.0 - q)
    u = rng.random(n)
    cdf = probs.cumsum(dim=1).numpy()
    noisy = (u[:, None] > cdf).sum(axis=1).clip(0, num_classes - 1)
    return torch.from_numpy(noisy.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# what the noise did
# ---------------------------------------------------------------------------------------------


def transition_matrix(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Empirical T[i, j] = #(clean i, noisy j) / #(clean i), float64 [K, K]; a class without samples gets an identity row."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((clean.long(), noisy.long()), torch.ones(len(clean), dtype=torch.float64), accumulate=True)
    totals = counts.sum(dim=1, keepdim=True)
    eye = torch.eye(num_classes, dtype=torch.float64)
    return torch.where(totals > 0, counts / totals.clamp_min(1.0), eye)
