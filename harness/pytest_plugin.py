"""The harness pytest plugin: fixtures for testing methods (installed with harness via `pytest11`).

Every pytest session in an environment where harness is installed gets these fixtures; nothing
heavy is imported until a test asks for one.

- `harness_catalog`: a fresh catalog of the installed plugins (`harness.catalog.load_catalog()`).
- `harness_tiny_data`: a small slice of real data (256 + 128 images of scikit-learn's digits,
  1x8x8 uint8, 10 classes), loaded once per session, offline.
- `harness_check_method`: `harness_check_method(method_or_name)` runs the conformance checks of
  `harness.conformance.check_method` and fails the test with every failed check listed.

A plugin package's whole conformance test is::

    from harness_my_methods import EXAMPLE

    def test_conforms(harness_check_method):
        harness_check_method(EXAMPLE)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def harness_catalog() -> Any:
    """A freshly built catalog of every installed harness plugin."""
    from harness.catalog import load_catalog

    return load_catalog()


@pytest.fixture(scope="session")
def harness_tiny_data() -> Any:
    """`harness.conformance.TinyData`: train_x/train_y (256), test_x/test_y (128), num_classes (10)."""
    from harness.conformance import tiny_data

    return tiny_data()


@pytest.fixture
def harness_check_method(harness_catalog: Any, harness_tiny_data: Any) -> Callable[..., Any]:
    """`check(method_or_name, seed=0)`: raise a ConformanceError listing every failed check."""
    from harness.conformance import check_method

    def check(method_or_name: Any, *, seed: int = 0) -> Any:
        __tracebackhide__ = True
        return check_method(method_or_name, catalog=harness_catalog, data=harness_tiny_data, seed=seed)

    return check
