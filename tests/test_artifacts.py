"""Trained-once artifacts: stored as safetensors, reused across calls and processes."""

from __future__ import annotations

import torch
from torch import nn

from harness.artifacts import artifact_id, cached_model


def test_an_artifact_is_trained_once_and_reused(tmp_path):
    calls = []

    def train(model: nn.Module) -> dict:
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(0.5)
        return {"acc": 0.9}

    key = {"dataset": "d", "model": "lin", "seed": 0}
    first, facts = cached_model(tmp_path, key, lambda: nn.Linear(3, 2), train)
    second, again = cached_model(tmp_path, key, lambda: nn.Linear(3, 2), train)
    assert calls == [1]
    assert facts["reused"] is False and again["reused"] is True and again["acc"] == 0.9
    assert torch.equal(first.weight, second.weight) and torch.all(second.weight == 0.5)
    assert {p.suffix for p in (tmp_path / "artifacts").iterdir()} >= {".safetensors", ".json"}
    _other, _ = cached_model(tmp_path, {**key, "seed": 1}, lambda: nn.Linear(3, 2), train)
    assert calls == [1, 1]
    assert artifact_id(key) != artifact_id({**key, "seed": 1})
