from __future__ import annotations

import pytest

from harness.testing import offline_environ


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test touches the network or the user's caches; results go to a fresh folder per test."""
    tmp = tmp_path_factory.mktemp("env")
    for key, value in offline_environ(tmp).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HARNESS_PLUGINS", raising=False)
    monkeypatch.delenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("HARNESS_TRACE_PLUGINS", raising=False)
    monkeypatch.delenv("HARNESS_RESULTS", raising=False)
