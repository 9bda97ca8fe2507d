"""harness: a plugin-based benchmark and leaderboard harness for deep-learning methods."""

from __future__ import annotations

from typing import Any

from harness.hookspecs import hookimpl
from harness.params import Param

__version__ = "0.1.0"

_LAZY = {  # these pull in torch; resolved on first use so `harness --help` stays fast
    "Method": "harness.kinds",
    "Loss": "harness.kinds",
    "Augmentation": "harness.kinds",
    "Merging": "harness.kinds",
    "Unlearning": "harness.kinds",
    "TestTimeAdaptation": "harness.kinds",
    "Adapter": "harness.kinds",
    "Strategy": "harness.kinds",
    "Task": "harness.kinds",
    "LossContext": "harness.kinds",
    "AugmentContext": "harness.kinds",
    "MergeContext": "harness.kinds",
    "UnlearnContext": "harness.kinds",
    "AdaptContext": "harness.kinds",
    "StrategyContext": "harness.kinds",
    "Suite": "harness.suite",
    "Recipe": "harness.suite",
    "Metric": "harness.suite",
    "DatasetSource": "harness.data",
    "DataSplits": "harness.data",
    "ModelSource": "harness.models",
}

__all__ = ["Param", "__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
