"""Every `harness_*` hook, grouped by the phase in which the core calls it.

Plugins implement hooks with `@harness.hookimpl`. Registration hooks receive a `register`
callback owned by the core, so the core owns name collisions, suggestions and stamping each
object with the distribution (name, version) that provided it. Observer hooks are called by
the run coordinator in the main process; their return values are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness.spec import RunSpec

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")

# ---------------------------------------------------------------------------------------------
# registration: called once per plugin when the catalog is built
# ---------------------------------------------------------------------------------------------


@hookspec
def harness_register_kinds(register: Callable[[Any], None]) -> None:
    """Register kinds of method (harness.kind.Kind): an interface, its place in an entry, whether
    its methods train, its conformance check and its `new-plugin` template.

    Called once for each plugin when the catalog is built, for every plugin before any method,
    suite, dataset or model is registered (a plugin may register methods of another plugin's kind).

    :param register: call `register(harness.Kind(...))` once per kind. A name that another
        plugin already registered raises; the plugin is then reported as broken.
    """


@hookspec
def harness_register_methods(register: Callable[[Any], None]) -> None:
    """Register methods of any registered kind.

    Called once for each plugin when the catalog is built, after every plugin's kinds.

    :param register: call `register(harness.Method(...))` once per method. A name that another
        plugin already registered, or a kind no plugin registered, raises; the plugin is then
        reported as broken (the built-in plugins load first, so a clash never disables them).
    """


@hookspec
def harness_register_suites(register: Callable[[Any], None]) -> None:
    """Register suites (versioned protocol cards).

    :param register: call `register(harness.Suite(...))` once per suite.
    """


@hookspec
def harness_register_datasets(register: Callable[[Any], None]) -> None:
    """Register dataset sources.

    :param register: call `register(harness.DatasetSource(...))` once per dataset.
    """


@hookspec
def harness_register_models(register: Callable[[Any], None]) -> None:
    """Register model factories `(num_classes, in_chans, img_size) -> nn.Module`.

    :param register: call `register(harness.ModelSource(...))` once per model.
    """


# ---------------------------------------------------------------------------------------------
# observers: called by the coordinator while a grid runs
# ---------------------------------------------------------------------------------------------


@hookspec
def harness_grid_start(specs: list[RunSpec], cached: int) -> None:
    """Called before the first run of a grid.

    :param specs: the runs that will be trained (already-stored runs are not among them).
    :param cached: how many runs of the requested grid were already stored and are skipped.
    """


@hookspec
def harness_run_start(spec: RunSpec) -> None:
    """Called when a run starts training.

    :param spec: the run's specification (`spec.run_id` identifies it).
    """


@hookspec
def harness_run_progress(spec: RunSpec, epoch: int, epochs: int, train_loss: float) -> None:
    """Called after every training epoch of a run.

    :param epoch: epochs completed so far (1-based).
    :param epochs: the run's total epochs.
    :param train_loss: mean training loss of that epoch.
    """


@hookspec
def harness_run_end(spec: RunSpec, result: dict[str, Any]) -> None:
    """Called when a run has finished, failed or diverged, after its result file is written.

    :param result: the stored result record (`status`, `metrics`, `duration_s`, ...).
    """


@hookspec
def harness_grid_end(stored: int, failed: int) -> None:
    """Called after the last run of a grid, before the leaderboard is printed.

    :param stored: runs newly stored by this grid (any status).
    :param failed: of those, runs whose status is not `ok`.
    """
