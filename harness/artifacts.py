"""Trained-once artifacts: models that many runs share (a TTA source model, an unlearning suite's
original and retrained models, a continual suite's base model).

An artifact is identified by the hash of a canonical JSON key (what it was trained on and how);
it is trained by the first run that needs it and reused by every later run, in any process.
Weights are stored as safetensors (never pickle) with a JSON sidecar (the artifact's card) holding
the key, facts about the training and the SHA-256 of the weights, so that a copy shared with
`harness push`/`pull` is verified against its id and its weights before use; a file lock makes concurrent workers wait for one training instead of
repeating it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

ARTIFACT_FORMAT = 1  # bump when the stored layout changes


def artifact_id(key: dict[str, Any]) -> str:
    text = json.dumps({"format": ARTIFACT_FORMAT, **key}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 23), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_model(
    cache_dir: Path, key: dict[str, Any], build: Callable[[], nn.Module], train: Callable[[nn.Module], dict[str, Any]]
) -> tuple[nn.Module, dict[str, Any]]:
    """Return the model for `key`: loaded if stored, else built, trained by `train(model)` and stored.

    `train` returns facts to keep beside the weights (e.g. its accuracy, its training time);
    they come back as the second value, with `artifact_id` and `reused` (whether it was loaded).
    """
    from safetensors.torch import load_file, save_file

    aid = artifact_id(key)
    folder = Path(cache_dir) / "artifacts"
    weights, sidecar = folder / f"{aid}.safetensors", folder / f"{aid}.json"
    model = build()
    with _locked(folder / f"{aid}.lock"):
        if weights.exists() and sidecar.exists():
            meta = json.loads(sidecar.read_text())
            if meta.get("key") == key:
                model.load_state_dict(load_file(str(weights)))
                return model, {**meta["facts"], "artifact_id": aid, "reused": True}
        facts = train(model)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        tmp = weights.with_name(f".{aid}.{os.getpid()}.tmp")
        save_file(state, str(tmp))
        os.replace(tmp, weights)
        tmp_meta = sidecar.with_name(f".{aid}.{os.getpid()}.json.tmp")
        # the weights' digest lets `harness push`/`pull` verify a shared copy before anyone uses it
        tmp_meta.write_text(json.dumps({"key": key, "facts": facts, "weights_sha256": weights_sha256(weights)}, sort_keys=True, indent=1))
        os.replace(tmp_meta, sidecar)
    return model, {**facts, "artifact_id": aid, "reused": False}
