"""Kind `merging`: build one model from a shared base and experts fine-tuned from it.

`build(ctx: MergeContext, **hp)` returns a `Merging`; a suite that ranks merging calls
`merge(base, experts, ctx) -> state_dict` with the base's and each expert's state dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.hookspecs import hookimpl
from harness.kind import Kind, KindScaffold

State = dict[str, torch.Tensor]


@dataclass
class MergeContext:
    """What a merging method gets besides the state dicts.

    - `num_tasks`: the number of experts.
    - `unlabeled()`: yields unlabeled input batches of the target tasks (AdaMerging-style methods);
      None when the protocol offers none.
    - `param_keys`: the state-dict keys of trainable parameters (what is merged; the other entries
      are buffers); None means every floating-point tensor.
    - `seed`: drives the method's own randomness (DARE's masks).
    - `build_model()`: a fresh model of the architecture (to evaluate merged parameters).
    - `fishers`: one dict of diagonal Fisher information per expert, keyed like `param_keys`,
      given to a method that declares `needs_fisher = True`.
    """

    num_tasks: int
    unlabeled: Callable[[], Any] | None = None
    device: str = "cpu"
    param_keys: tuple[str, ...] | None = None
    seed: int = 0
    build_model: Callable[[], nn.Module] | None = None
    fishers: list[State] | None = None


class Merging:
    """`merge(base, experts, ctx)` returns one state dict built from the base's and the experts'.

    Declared options: `needs_fisher = True` asks the suite for each expert's diagonal Fisher
    (`ctx.fishers`); `report()` returns named series the suite stores with the run (e.g. learned
    coefficients). Never change the given state dicts in place.
    """

    needs_fisher: bool = False

    def merge(self, base: State, experts: list[State], ctx: MergeContext) -> State:
        raise NotImplementedError

    def report(self) -> dict[str, list[float]]:
        """Series to store with the run (after `merge`); default none."""
        return {}


# ---------------------------------------------------------------------------------------------
# conformance
# ---------------------------------------------------------------------------------------------


def check(method: Any, env: Any) -> Any:
    """Merge tiny state dicts: keys, shapes and dtypes kept; inputs not mutated; the result loads."""
    from harness.conformance import finite, normalizer_of, require, tiny_model

    data, seed = env.data, env.seed
    base_model = tiny_model(data, seed)
    base = {k: v.clone() for k, v in base_model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    experts = []
    for _ in range(3):  # experts: the base plus a small task vector in every float tensor
        experts.append({k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in base.items()})
    originals = [{k: v.clone() for k, v in sd.items()} for sd in (base, *experts)]
    normalizer = normalizer_of(data)
    batches = [normalizer(data.train_x[i : i + 32]) for i in range(0, 96, 32)]
    param_keys = tuple(name for name, _ in base_model.named_parameters())
    ctx = MergeContext(num_tasks=len(experts), unlabeled=lambda: list(batches), device="cpu", param_keys=param_keys, seed=seed,
                       build_model=lambda: tiny_model(data, seed))
    merger = method.create(ctx)
    require(isinstance(merger, Merging), f"build returned a {type(merger).__name__}; a merging method must return a harness.kinds.merging.Merging")
    if merger.needs_fisher:  # positive diagonal Fishers, one dict per expert
        ctx.fishers = [{k: (t + 1) * torch.ones_like(base[k]) for k in param_keys} for t in range(len(experts))]
    torch.manual_seed(seed)
    merged = merger.merge(base, experts, ctx)
    require(isinstance(merged, dict), f"merge must return a state dict, got {type(merged).__name__}")
    require(set(merged) == set(originals[0]), f"merged keys differ from the base's: missing {sorted(set(originals[0]) - set(merged))[:3]}, extra {sorted(set(merged) - set(originals[0]))[:3]}")
    for key, value in originals[0].items():
        require(tuple(merged[key].shape) == tuple(value.shape) and merged[key].dtype == value.dtype, f"{key}: merged {merged[key].dtype} {tuple(merged[key].shape)}, base {value.dtype} {tuple(value.shape)}")
        require(finite(merged[key]), f"{key}: merged values are not finite")
    for before, after in zip(originals, (base, *experts)):
        require(all(torch.equal(before[k], after[k]) for k in before), "merge modified the base's or an expert's state dict in place")
    report = merger.report()
    require(isinstance(report, dict) and all(isinstance(v, list) for v in report.values()), "report() must return a dict of lists of numbers")
    model = tiny_model(data, seed)
    model.load_state_dict(merged)  # strict: the result must load into the architecture it came from
    return {key: value for key, value in sorted(merged.items())}


# ---------------------------------------------------------------------------------------------
# the new-plugin template
# ---------------------------------------------------------------------------------------------

METHODS_TEMPLATE = '''\
"""$dist: methods for the harness benchmark, registered through the `harness` entry point."""

from __future__ import annotations

import torch

from harness import Method, Param, hookimpl
from harness.kinds.merging import MergeContext, Merging


class TaskArithmetic(Merging):
    """theta = theta_base + scale * sum_t (theta_t - theta_base), tensor by tensor."""

    def __init__(self, ctx: MergeContext, scale: float):  # the default lives on the Param
        self.scale = scale

    def merge(
        self, base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]], ctx: MergeContext
    ) -> dict[str, torch.Tensor]:
        merged = {}
        for key, value in base.items():
            if not value.is_floating_point():  # integer buffers (BatchNorm's num_batches_tracked)
                merged[key] = value.clone()
                continue
            task_vectors = sum(expert[key] - value for expert in experts)
            merged[key] = value + self.scale * task_vectors  # new tensors: never change the inputs
        return merged


$CONST = Method(
    name="$method",
    kind="merging",
    build=TaskArithmetic,
    summary="task arithmetic: add the scaled sum of the experts' task vectors to the base",
    paper="Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
    url="https://arxiv.org/abs/2212.04089",
    params=(Param("scale", float, 0.3, "scaling coefficient lambda of the summed task vectors", low=0.0),),
    version="1",  # part of every run's identity: bump it when a change alters results
)


@hookimpl
def harness_register_methods(register):
    register($CONST)
'''

TESTS_TEMPLATE = '''\
"""Tests of $package: harness's conformance kit, then the method's own behaviour by hand."""

from __future__ import annotations

import torch

from harness.kinds.merging import MergeContext

from $package.methods import $CONST


def test_conforms(harness_check_method):
    # declaration, a merge of tiny state dicts, finite, deterministic, CLI round-trip
    harness_check_method($CONST)


def test_value_by_hand():
    # base 0, experts 1 and 3: task vectors sum to 4, so scale 0.5 gives 2; integer buffers kept
    merger = $CONST.create(MergeContext(num_tasks=2), scale=0.5)
    base = {"w": torch.zeros(3), "steps": torch.tensor(7)}
    experts = [{"w": torch.ones(3), "steps": torch.tensor(1)}, {"w": torch.full((3,), 3.0), "steps": torch.tensor(2)}]
    merged = merger.merge(base, experts, MergeContext(num_tasks=2))
    assert torch.equal(merged["w"], torch.full((3,), 2.0)) and int(merged["steps"]) == 7
'''


KIND = Kind(
    name="merging",
    summary="builds one model from a shared base and experts fine-tuned from it (state dicts in, state dict out)",
    interface=Merging,
    order=30,
    check=check,
    scaffold=KindScaffold("a task-arithmetic merging method", METHODS_TEMPLATE, TESTS_TEMPLATE),
    suite="continual",
)


@hookimpl
def harness_register_kinds(register):
    register(KIND)
