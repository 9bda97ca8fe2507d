"""harness: a plugin-based benchmark and leaderboard harness for deep-learning methods."""

from __future__ import annotations

from typing import Any

from harness.hookspecs import hookimpl
from harness.params import Choice, IntUniform, LogUniform, Param, Uniform

__version__ = "0.1.0"

_LAZY = {  # these pull in torch; resolved on first use so `harness --help` stays fast
    "Method": "harness.method",
    "MethodRef": "harness.method",
    "Kind": "harness.kind",
    "KindScaffold": "harness.kind",
    "Suite": "harness.suite",
    "Recipe": "harness.suite",
    "Metric": "harness.suite",
    "DatasetSource": "harness.data",
    "DataSplits": "harness.data",
    "ModelSource": "harness.models",
    # the Python API for notebooks (harness.api)
    **{name: "harness.api" for name in ("run", "board", "runs", "curves", "sample_predictions")},
    # the training seam's roles and data (harness.seams)
    **{name: "harness.seams" for name in (
        "TrainContext", "Batch", "Outputs", "EpochPlan", "HeadedModel", "Peer", "Teacher", "Role", "Transform", "Objective", "LossTerm",
        "ModelShaper", "AuxiliaryModels", "UpdateRule", "Sampler", "Observer", "Predictor", "StepOwner", "StepTools",
    )},
}

__all__ = ["Choice", "IntUniform", "LogUniform", "Param", "Uniform", "__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name[:1].isupper():  # a submodule (`from harness import stats`) or a typo: the kinds export classes only
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    kinds = importlib.import_module("harness.kinds")  # the built-in kinds' interfaces (Loss, Augmentation, ...)
    if name in kinds.__all__:
        return getattr(kinds, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
