"""Kind `calibration` and its built-in methods: post-hoc calibrators of a trained classifier.

A calibrator is not a training method: a suite that ranks the kind (the calibration suite)
trains the classifier with the entry's training methods (`focal+temperature` trains with focal
loss), then calls `fit(validation, labels)` on a validation split, never the test split, and
`calibrate(data) -> probabilities` on every evaluation set. Both see `Predictions`: the trained
classifier's logits of a set, its uint8 images, and `predict` to ask the same classifier about
other images (the correctness-aware calibrator looks at transformed views).

A calibrator keeps every predicted class (the arg-max of its probabilities is the arg-max of the
logits) unless it declares `changes_prediction = True`; the calibration suite fails a run that
breaks that promise, and the conformance check tests it.

Methods here: `uncalibrated` (the softmax of the logits: the baseline), `temperature` (Guo et
al. 2017), `vector_scaling` (Guo et al. 2017), `histogram_binning` (Zadrozny & Elkan 2001,
one-vs-rest as in Zadrozny & Elkan 2002 and Guo et al. 2017) and `correctness_aware` (Liu et
al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from harness import Kind, KindScaffold, Method, Param, hookimpl

# ---------------------------------------------------------------------------------------------
# the kind
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationContext:
    """What a calibrator knows when it is built: the number of classes, the device the classifier
    runs on, and the run's seed (for a calibrator's own draws)."""

    num_classes: int
    device: str = "cpu"
    seed: int = 0


@dataclass(frozen=True)
class Predictions:
    """A set the calibrator sees: the trained classifier's `logits` (float32 [N, K], CPU), the
    `images` they come from (uint8 [N, C, H, W]) and `predict(images) -> logits` (the same
    classifier, for other views of the images); the last two may be None for logits-only data."""

    logits: torch.Tensor
    images: torch.Tensor | None = None
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None


class Calibrator:
    """The kind's interface. `fit(validation, labels)` learns from a labelled validation split;
    `calibrate(data)` returns probabilities [N, K] (floating point, rows summing to 1) for any set;
    return float64 where a probability can be tiny (float32 rounds below 1e-45 to 0, and the NLL
    of a true class of probability 0 is infinite).
    `changes_prediction = False` promises that the arg-max of the probabilities is the arg-max of
    the logits (rows whose two largest logits tie aside); declare True when it may differ.
    `facts()` is what the suite stores with the run (a fitted temperature, ...)."""

    changes_prediction: bool = False

    def fit(self, validation: Predictions, labels: torch.Tensor) -> None:
        """Learn from the validation split (default: nothing to learn)."""

    def calibrate(self, data: Predictions) -> torch.Tensor:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {}


def check(method: Any, env: Any) -> Any:
    """A tiny CNN trained two short epochs on digits; the calibrator is fitted on 64 held-out images
    and calibrates 64 others: probabilities of the right shape, finite, in [0, 1], rows summing to
    1, inputs left unchanged, and every predicted class kept unless it declares otherwise."""
    from harness.conformance import CHECK_RECIPE, cross_entropy_loss, finite, normalizer_of, require, tiny_model
    from harness.engine import predict, train

    data, seed = env.data, env.seed
    k = data.num_classes
    model = tiny_model(data, seed)
    normalizer = normalizer_of(data)
    train(model, data.train_x, data.train_y, recipe=CHECK_RECIPE, parts=[cross_entropy_loss()], normalizer=normalizer, seed=seed, device="cpu")

    def classify(images: torch.Tensor) -> torch.Tensor:
        return predict(model, images, normalizer=normalizer, device="cpu")

    val_x, val_y, test_x = data.test_x[:64], data.test_y[:64], data.test_x[64:128]
    validation = Predictions(classify(val_x), val_x, classify)
    test = Predictions(classify(test_x), test_x, classify)
    kept = (validation.logits.clone(), val_y.clone(), test.logits.clone())
    torch.manual_seed(seed)
    calibrator = method.create(CalibrationContext(num_classes=k, device="cpu", seed=seed))
    require(isinstance(calibrator, Calibrator), f"build returned a {type(calibrator).__name__}; a calibration method must return a harness_plugins.calibration.Calibrator")
    calibrator.fit(validation, val_y)
    probs = calibrator.calibrate(test)
    require(all(torch.equal(a, b) for a, b in zip(kept, (validation.logits, val_y, test.logits))), "fit or calibrate changed its inputs in place")
    require(isinstance(probs, torch.Tensor) and tuple(probs.shape) == (len(test_x), k), f"calibrate must give probabilities [N, {k}], got {getattr(probs, 'shape', type(probs))}")
    require(probs.is_floating_point() and finite(probs), "calibrate gave non-finite probabilities")
    require(bool(((probs >= 0) & (probs <= 1)).all()), "probabilities must lie in [0, 1]")
    require(bool(torch.allclose(probs.double().sum(1), torch.ones(len(probs), dtype=torch.float64), atol=1e-5)), "each row of probabilities must sum to 1")
    if not calibrator.changes_prediction:
        changed = prediction_changes(test.logits, probs)
        require(changed == 0, f"{changed} predicted class(es) changed, but the calibrator does not declare changes_prediction = True")
    require(isinstance(calibrator.facts(), dict), "facts() must return a dict")
    return {"probs": probs}


def prediction_changes(logits: torch.Tensor, probs: torch.Tensor) -> int:
    """How many rows' arg-max the probabilities moved, leaving out rows whose two largest logits tie."""
    top2 = logits.float().topk(min(2, logits.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > 1e-6 if logits.shape[1] > 1 else torch.ones(len(logits), dtype=torch.bool)
    return int(((logits.argmax(1) != probs.argmax(1)) & clear).sum())


KIND_METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import math

import torch
from harness_plugins.calibration import CalibrationContext, Calibrator, Predictions
from torch.nn import functional as F

from harness import Method, Param, hookimpl


class GridTemperature(Calibrator):
    """Temperature scaling with T chosen on a geometric grid: the T in [0.05, 20] with the lowest
    validation negative log-likelihood; probabilities softmax(z / T) keep every predicted class."""

    def __init__(self, ctx: CalibrationContext, steps: int):  # the default lives on the Param
        self.steps = steps
        self.temperature = 1.0

    def fit(self, validation: Predictions, labels: torch.Tensor) -> None:
        z = validation.logits.double()
        grid = [0.05 * math.exp(i * math.log(400) / (self.steps - 1)) for i in range(self.steps)]
        self.temperature = min(grid, key=lambda t: F.cross_entropy(z / t, labels).item())

    def calibrate(self, data: Predictions) -> torch.Tensor:
        return torch.softmax(data.logits.double() / self.temperature, dim=1)

    def facts(self) -> dict:
        return {"temperature": self.temperature}


$CONST = Method(
    name="$method",
    kind="calibration",
    build=GridTemperature,
    summary="temperature scaling with the temperature picked on a grid by validation NLL",
    paper="Guo, Pleiss, Sun & Weinberger, On Calibration of Modern Neural Networks, ICML 2017",
    url="https://arxiv.org/abs/1706.04599",
    params=(Param("steps", int, 100, "grid points between T = 0.05 and T = 20 (geometric)", low=2),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
'''

KIND_TESTS_TEMPLATE = '''\
"""Tests of $package: harness's conformance kit, then the method's own behaviour by hand."""

from __future__ import annotations

import math

import torch
from harness_plugins.calibration import CalibrationContext, Predictions

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, fit on held-out digits, probabilities that sum to 1, predictions kept, determinism
    harness_check_method($CONST)


def test_value_by_hand():
    # logits (2, 0) labelled 0 and 1 equally often: the likelihood is highest for the flattest
    # distribution, so the grid's largest temperature (20) wins and p_0 = sigmoid(2 / 20)
    calibrator = $CONST.create(CalibrationContext(num_classes=2))
    logits = torch.tensor([[2.0, 0.0]] * 4)
    calibrator.fit(Predictions(logits), torch.tensor([0, 1, 0, 1]))
    probs = calibrator.calibrate(Predictions(logits[:1]))
    assert math.isclose(calibrator.temperature, 20.0, rel_tol=1e-9)
    assert math.isclose(probs[0, 0].item(), 1 / (1 + math.exp(-0.1)), rel_tol=1e-6)
'''

KIND = Kind(
    name="calibration",
    summary="a post-hoc calibrator of a trained classifier, fitted on a validation split (fit, then calibrate -> probabilities)",
    interface=Calibrator,
    order=70,
    check=check,
    scaffold=KindScaffold("a grid temperature calibrator", KIND_METHODS_TEMPLATE, KIND_TESTS_TEMPLATE),
    suite="calibration",
)


# ---------------------------------------------------------------------------------------------
# uncalibrated: the softmax of the logits
# ---------------------------------------------------------------------------------------------


class Uncalibrated(Calibrator):
    """p = softmax(z): the classifier's own probabilities."""

    def __init__(self, ctx: CalibrationContext):
        pass

    def calibrate(self, data: Predictions) -> torch.Tensor:
        return torch.softmax(data.logits.double(), dim=1)


UNCALIBRATED = Method(
    name="uncalibrated",
    kind="calibration",
    build=Uncalibrated,
    summary="no calibration: the softmax of the classifier's logits (the baseline)",
    paper="Guo, Pleiss, Sun & Weinberger, On Calibration of Modern Neural Networks, ICML 2017 (the uncalibrated row)",
    url="https://arxiv.org/abs/1706.04599",
)


# ---------------------------------------------------------------------------------------------
# temperature and vector scaling: Guo, Pleiss, Sun & Weinberger 2017, Sec. 4.2
# ---------------------------------------------------------------------------------------------


def minimise_nll(params: list[torch.Tensor], logits_of: Callable[[], torch.Tensor], labels: torch.Tensor, max_iter: int) -> None:
    """L-BFGS with a strong-Wolfe line search on the mean validation NLL of `logits_of()` (float64)."""
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_of(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)


class TemperatureScaling(Calibrator):
    """p = softmax(z / T), one T > 0 minimising the validation NLL (Guo et al., Sec. 4.2), found by
    L-BFGS on log T. The NLL is convex in 1/T, so the minimiser is unique; T > 0 keeps every
    predicted class."""

    def __init__(self, ctx: CalibrationContext):
        self.temperature = 1.0

    def fit(self, validation: Predictions, labels: torch.Tensor) -> None:
        z = validation.logits.double()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        minimise_nll([log_t], lambda: z / log_t.exp(), labels, max_iter=200)
        self.temperature = float(log_t.detach().exp())

    def calibrate(self, data: Predictions) -> torch.Tensor:
        return torch.softmax(data.logits.double() / self.temperature, dim=1)

    def facts(self) -> dict[str, Any]:
        return {"temperature": self.temperature}


TEMPERATURE = Method(
    name="temperature",
    kind="calibration",
    build=TemperatureScaling,
    summary="temperature scaling: one temperature fitted by validation NLL (L-BFGS); keeps every prediction",
    paper="Guo, Pleiss, Sun & Weinberger, On Calibration of Modern Neural Networks, ICML 2017",
    url="https://arxiv.org/abs/1706.04599",
)


class VectorScaling(Calibrator):
    """p = softmax(w * z + b), w and b in R^K (elementwise), fitted by validation NLL (Guo et al.,
    Sec. 4.2; L-BFGS from w = 1, b = 0; the NLL is convex in (w, b)). May change predictions."""

    changes_prediction = True

    def __init__(self, ctx: CalibrationContext):
        self.weight = torch.ones(ctx.num_classes, dtype=torch.float64)
        self.bias = torch.zeros(ctx.num_classes, dtype=torch.float64)

    def fit(self, validation: Predictions, labels: torch.Tensor) -> None:
        z = validation.logits.double()
        w = torch.ones(z.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        minimise_nll([w, b], lambda: z * w + b, labels, max_iter=500)
        self.weight, self.bias = w.detach(), b.detach()

    def calibrate(self, data: Predictions) -> torch.Tensor:
        return torch.softmax(data.logits.double() * self.weight + self.bias, dim=1)


VECTOR_SCALING = Method(
    name="vector_scaling",
    kind="calibration",
    build=VectorScaling,
    summary="vector scaling: a per-class scale and bias of the logits fitted by validation NLL (may change predictions)",
    paper="Guo, Pleiss, Sun & Weinberger, On Calibration of Modern Neural Networks, ICML 2017",
    url="https://arxiv.org/abs/1706.04599",
)


# ---------------------------------------------------------------------------------------------
# histogram binning: Zadrozny & Elkan 2001 (equal-size bins), one-vs-rest for K classes
# ---------------------------------------------------------------------------------------------


class HistogramBinning(Calibrator):
    """For each class k, the validation samples are sorted by their softmax score p_k and cut into
    `bins` bins of equal size (Zadrozny & Elkan 2001, Sec. 3: equal-frequency bins, 10 of them);
    a bin's estimate is the fraction of its samples whose label is k. A score falls in the bin of
    the largest lower edge (the first score of each bin) not above it. The K one-vs-rest estimates
    are normalised to sum to 1 (Zadrozny & Elkan 2002; Guo et al. 2017, Sec. 4.2); a row whose
    estimates are all 0 becomes uniform. May change predictions, and may give a true class
    probability 0 (then its NLL is infinite and is stored as undefined)."""

    changes_prediction = True

    def __init__(self, ctx: CalibrationContext, bins: int):
        self.bins = bins
        self.edges: torch.Tensor | None = None  # [K, bins - 1] lower edges of bins 1..bins-1
        self.values: torch.Tensor | None = None  # [K, bins] fraction of positives

    def fit(self, validation: Predictions, labels: torch.Tensor) -> None:
        p = torch.softmax(validation.logits.double(), dim=1)
        n, k = p.shape
        if n < self.bins:
            raise ValueError(f"histogram binning with {self.bins} bins needs at least {self.bins} validation samples, got {n}")
        positive = F.one_hot(labels.long(), k).double()
        order = torch.argsort(p, dim=0, stable=True)  # per class, ascending scores
        bin_of_rank = torch.arange(n) * self.bins // n  # equal-size bins over the sorted ranks
        sorted_scores = torch.gather(p, 0, order)
        sorted_positive = torch.gather(positive, 0, order)
        starts = torch.searchsorted(bin_of_rank, torch.arange(1, self.bins))  # rank of each bin's first sample
        self.edges = sorted_scores[starts].T.contiguous()  # [K, bins - 1]
        sums = torch.zeros(self.bins, k, dtype=torch.float64).index_add_(0, bin_of_rank, sorted_positive)
        counts = torch.bincount(bin_of_rank, minlength=self.bins).double().unsqueeze(1)
        self.values = (sums / counts).T.contiguous()  # [K, bins]

    def calibrate(self, data: Predictions) -> torch.Tensor:
        if self.edges is None or self.values is None:
            raise RuntimeError("histogram binning must be fitted on a validation split before it calibrates")
        p = torch.softmax(data.logits.double(), dim=1)
        k = p.shape[1]
        bins = torch.stack([torch.bucketize(p[:, c].contiguous(), self.edges[c], right=True) for c in range(k)], dim=1)  # [N, K]
        q = self.values[torch.arange(k).unsqueeze(0), bins]  # q[n, c] = values[c, bin of p[n, c]]
        total = q.sum(1, keepdim=True)
        return torch.where(total > 0, q / total.clamp_min(1e-300), torch.full_like(q, 1.0 / k))

    def facts(self) -> dict[str, Any]:
        return {"bins": self.bins}


HISTOGRAM_BINNING = Method(
    name="histogram_binning",
    kind="calibration",
    build=HistogramBinning,
    summary="histogram binning: per class, equal-size bins of the validation scores map a score to its bin's positive rate",
    paper="Zadrozny & Elkan, Obtaining calibrated probability estimates from decision trees and naive Bayesian classifiers, ICML 2001",
    url="https://cseweb.ucsd.edu/~elkan/calibrated.pdf",
    params=(Param("bins", int, 10, "equal-size bins per class (Zadrozny & Elkan: 10)", low=1),),
)


# ---------------------------------------------------------------------------------------------
# correctness_aware: Liu, Wang, Zou, Zou & Zheng 2024 (the authors' `Temperature_adaptive`)
# ---------------------------------------------------------------------------------------------


def rotated(images: torch.Tensor) -> torch.Tensor:
    """Rotated by 90 degrees (counter-clockwise), exactly, on the pixel grid."""
    return torch.rot90(images, 1, dims=(2, 3))


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B) in every channel; a grey image is unchanged."""
    if images.shape[1] != 3:
        return images.clone()
    luma = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).round().clamp(0, 255).to(torch.uint8)
    return luma.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def colour_jittered(images: torch.Tensor, brightness: float = 0.6, contrast: float = 0.6) -> torch.Tensor:
    """Brightness x0.6, then contrast x0.6 about each image's mean: one fixed jitter, so a sample's
    view (and its calibrated confidence) does not depend on a random draw."""
    x = images.float() * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + contrast * (x - mean)).round().clamp(0, 255).to(torch.uint8)


VIEWS: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (rotated, greyscale, colour_jittered)


def correctness_aware_loss(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor | None:
    """The CA loss of a mini-batch: sum_i w_i (conf_i - c_i)^2 / sum_i w_i, with c_i in {0, 1} the
    correctness of sample i and w_i the batch's error rate for a correct sample, its accuracy for
    a wrong one (the authors' class-balancing weights). None when the weights sum to 0 (a batch
    of only correct, or only wrong, predictions)."""
    correct = correct.to(confidence.dtype)
    accuracy = correct.mean()
    weights = torch.where(correct > 0, 1 - accuracy, accuracy)
    if float(weights.sum()) == 0.0:
        return None
    return (weights * (confidence - correct).pow(2)).sum() / weights.sum()


class CorrectnessAware(Calibrator):
    """Correctness-aware calibration (Liu et al. 2024; the authors' `Temperature_adaptive` and
    `run_cal.py`): a per-sample temperature T(x) = clamp(w2 . relu(W1 f(x) + b1) + b2, 0.1, 10)
    from a feature vector f(x): the softmax of each of three transformed views of x (rotated,
    greyscale, colour-jittered), read at the original logits' top-`top_k` classes (3 x 4 = 12
    numbers). The calibrated probabilities are softmax(z / T(x)): every predicted class is kept.

    It is trained on the validation split with the correctness-aware (CA) loss: the squared gap
    between the calibrated confidence max_k p_k and the 0/1 correctness of the prediction, each
    sample weighted by the other group's share in its mini-batch (correct samples by the batch's
    error rate, wrong ones by its accuracy): sum_i w_i (conf_i - c_i)^2 / sum_i w_i. Adam, lr
    1e-4, 10 epochs, batches of 1000 shuffled samples, feature width 5: the authors' settings.
    A mini-batch whose samples are all correct (or all wrong) has no weight and is skipped (the
    authors' code would divide by zero). The transformations' parameters are not in the authors'
    release (their transformed predictions are precomputed files): here rotation by 90 degrees,
    ITU-R 601 greyscale and a fixed brightness/contrast factor of 0.6. The network is initialised
    from the run's seed. T(x) is clamped as the authors clamp it, so a temperature that starts
    below 0.1 gets no gradient (`facts` reports the share of clamped validation temperatures)."""

    def __init__(self, ctx: CalibrationContext, epochs: int, lr: float, batch_size: int, hidden: int, top_k: int):
        self.epochs, self.lr, self.batch_size, self.top_k = epochs, lr, batch_size, min(top_k, ctx.num_classes)
        self.seed = ctx.seed
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(ctx.seed)  # the calibrator's initialisation: a function of the run's seed
        features = len(VIEWS) * self.top_k
        self.embed = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.temperature_layer = nn.Linear(hidden, 1)
        torch.random.set_rng_state(generator_state)
        self.fit_facts: dict[str, Any] = {}

    def features(self, data: Predictions) -> torch.Tensor:
        if data.images is None or data.predict is None:
            raise ValueError("the correctness-aware calibrator needs the images and the classifier (Predictions.images, .predict) to see transformed views")
        top = data.logits.topk(self.top_k, dim=1).indices
        return torch.cat([torch.softmax(data.predict(view(data.images)).float(), dim=1).gather(1, top) for view in VIEWS], dim=1)

    def temperatures(self, features: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.temperature_layer(self.embed(features)), 0.1, 10.0).squeeze(1)

    def fit(self, validation: Predictions, labels: torch.Tensor) -> None:
        f = self.features(validation)
        z = validation.logits.float()
        correct = (z.argmax(1) == labels).float()
        params = [*self.embed.parameters(), *self.temperature_layer.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        skipped = 0
        for _ in range(self.epochs):
            order = torch.randperm(len(z), generator=generator)
            for start in range(0, len(z), self.batch_size):
                idx = order[start : start + self.batch_size]
                confidence = torch.softmax(z[idx] / self.temperatures(f[idx]).unsqueeze(1), dim=1).max(1).values
                loss = correctness_aware_loss(confidence, correct[idx])
                if loss is None:  # every sample of the batch right (or every one wrong): no weight
                    skipped += 1
                    continue
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            t = self.temperatures(f)
        self.fit_facts = {"mean_temperature": float(t.mean()), "clamped_share": float(((t <= 0.1) | (t >= 10.0)).float().mean()),
                          "skipped_batches": skipped}

    @torch.no_grad()
    def calibrate(self, data: Predictions) -> torch.Tensor:
        t = self.temperatures(self.features(data))
        return torch.softmax(data.logits.double() / t.double().unsqueeze(1), dim=1)

    def facts(self) -> dict[str, Any]:
        return dict(self.fit_facts)


CORRECTNESS_AWARE = Method(
    name="correctness_aware",
    kind="calibration",
    build=CorrectnessAware,
    summary="correctness-aware calibration: a per-sample temperature from transformed views, trained to match confidence to correctness",
    paper="Liu, Wang, Zou, Zou & Zheng, Optimizing Calibration by Gaining Aware of Prediction Correctness, arXiv 2404.13016, 2024",
    url="https://arxiv.org/abs/2404.13016",
    params=(
        Param("epochs", int, 10, "passes over the validation split (authors: 10)", low=1),
        Param("lr", float, 1e-4, "Adam learning rate (authors: 1e-4)", low=0.0),
        Param("batch_size", int, 1000, "mini-batch size (authors: 1000)", low=2),
        Param("hidden", int, 5, "width of the feature layer (authors: 5)", low=1),
        Param("top_k", int, 4, "classes of the original prediction each view is read at (authors: top 4)", low=1),
    ),
)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------

METHODS: tuple[Method, ...] = (UNCALIBRATED, TEMPERATURE, VECTOR_SCALING, HISTOGRAM_BINNING, CORRECTNESS_AWARE)


@hookimpl
def harness_register_kinds(register):
    register(KIND)


@hookimpl
def harness_register_methods(register):
    for method in METHODS:
        register(method)
