"""Kinds: what a kind of method is, registered by a plugin like everything else.

A kind is one module that registers a `Kind` through the `harness_register_kinds` hook: its
interface (what a method's `build` returns), its place in an entry, whether its methods join the
training loop, its conformance check and its `harness new-plugin` template. The built-in kinds
(`harness/kinds/`) come through the same entry-point door as a third party's; the core holds no
table of kind names. Suites say which kinds they rank and call a kind's methods through its
interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KindScaffold:
    """The example method `harness new-plugin NAME kind=KIND` writes.

    `methods` and `tests` are `string.Template` texts with the placeholders `$package`,
    `$method`, `$CONST`, `$dist`, `$entry_point`, `$kind` and `$summary` (`$$` is a dollar sign).
    `summary` says what the example is ("a confidence-penalty loss").
    """

    summary: str
    methods: str
    tests: str


@dataclass(frozen=True)
class Kind:
    """One kind of method.

    - `interface`: the class every object a method's `build(ctx, **hp)` returns must be an
      instance of.
    - `order`: where the kind's method stands in an entry (`ldam_drw+mixup+sam`): entries are
      written and identified in increasing order (ties by kind name). Changing it changes run ids.
    - `trains`: the kind's methods join the training loop (harness.seams roles); every suite that
      trains a classifier accepts them and `context` makes their build context from the run's
      `harness.seams.TrainContext`.
    - `check(method, env)`: the conformance kit's run of a method the way suites use it,
      on tiny real data (harness.conformance.CheckEnv); returns what must be finite and
      reproducible; raises harness.conformance.CheckFailed with a reason. `extra_checks` are
      further named checks `(name, fn(method, env))` the kit reports separately.
    - `scaffold`: the `new-plugin` template; `suite` the suite the scaffold suggests to try it in.
    """

    name: str
    summary: str
    interface: type
    order: int
    trains: bool = False
    context: Callable[[Any], Any] | None = None
    check: Callable[[Any, Any], Any] | None = None
    extra_checks: tuple[tuple[str, Callable[[Any, Any], None]], ...] = ()
    scaffold: KindScaffold | None = None
    suite: str = ""
    plugin: str = ""
    plugin_version: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"kind name {self.name!r} must be an identifier (letters, digits, underscores)")
        if not isinstance(self.interface, type):
            raise ValueError(f"kind {self.name!r}: interface must be a class, got {self.interface!r}")
        if not self.summary.strip():
            raise ValueError(f"kind {self.name!r} needs a one-line summary")
        if self.trains and self.context is None:
            raise ValueError(f"kind {self.name!r} trains, so it needs `context`: TrainContext -> the context its methods are built with")

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.order, self.name)
