"""The built-in kinds, one module each, registered through the `harness` entry points like any
plugin (`kind_loss = "harness.kinds.loss"`, ...). Each module holds its kind's interface, context,
conformance check and `new-plugin` template: harness.kinds.loss, .augmentation, .optimizer,
.merging, .unlearning, .tta, .strategy.

The names below are re-exported so that `from harness.kinds import Loss, Method` keeps working
for plugins written against earlier releases; new code imports from the kind's own module.
"""

from harness.kinds.augmentation import Augmentation, AugmentContext
from harness.kinds.loss import Loss, LossContext
from harness.kinds.merging import MergeContext, Merging
from harness.kinds.optimizer import Optimizer, OptimizerContext
from harness.kinds.strategy import Strategy, StrategyContext, Task
from harness.kinds.tta import AdaptContext, Adapter, TestTimeAdaptation
from harness.kinds.unlearning import UnlearnContext, Unlearning
from harness.method import Method

__all__ = [
    "AdaptContext", "Adapter", "AugmentContext", "Augmentation", "Loss", "LossContext", "MergeContext", "Merging", "Method",
    "Optimizer", "OptimizerContext", "Strategy", "StrategyContext", "Task", "TestTimeAdaptation", "UnlearnContext", "Unlearning",
]
