"""Per-sample predictions of a run: what is stored, how a stored file is checked, and what can be
recomputed from it without training again.

A suite hands its test predictions to the toolkit (`RunOutput(predictions={"test": (logits, labels)})`,
or a `Predictions` that also names the suite metrics they recompute); the record gets a short
summary (`record["predictions"]`: classes, rows per split, the metrics each split recomputes and a
SHA-256 digest of the stored values), and `runs/<run_id>/predictions.parquet` holds one row per
sample and split:

| column | type | what |
|---|---|---|
| `split` | string | e.g. `test` |
| `idx` | int32 | the sample's position in the split (0..n-1): pairs two runs' predictions |
| `label`, `pred` | int32 | the true class and the predicted class (argmax) |
| `confidence` | float32 | the maximum softmax probability (what ECE bins, in float32 as `harness.metrics` computes it) |
| `nll` | float32 | -log p(label), from float64 log-softmax (+inf where p(label) = 0) |
| `brier` | float32 | sum over classes of (p_k - [label = k])^2, from float64 softmax |
| `probs` | list of float16 | the full probability vector when K <= 100, else null |

So accuracy, ECE, NLL and the Brier score are recomputed exactly (to float32 rounding) for any K,
and the float16 probabilities keep anything else computable for K <= 100 at 2 bytes a class.

A stored file is data from outside as soon as it is read back: it is read only if it is a regular
file under `MAX_BYTES`, its Arrow schema must be exactly `SCHEMA` (no extension types, nothing a
reader would deserialise), every value is range-checked, and the digest of its values must equal
the one its record holds. Nothing is unpickled or executed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FILE_NAME = "predictions.parquet"
PAYLOAD_KEY = "_predictions_parquet"  # a record in transit carries its file's bytes here; never written to result.json
MAX_PROBABILITY_CLASSES = 100  # above this only the per-sample scores are stored, not the probability vector
MAX_ROWS = 2_000_000  # samples over all splits of one run (ImageNet's validation set is 50,000)
MAX_BYTES = 256 * 2**20
MAX_CLASSES = 1_000_000
SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
SCORES = ("accuracy", "ece", "nll", "brier")  # what a split's predictions recompute
ECE_BINS = 15  # as harness.metrics.expected_calibration_error
COLUMNS = ("split", "idx", "label", "pred", "confidence", "nll", "brier", "probs")


class BadPredictions(Exception):
    """A predictions file (or a suite's predictions) that is malformed or does not match its record."""


@dataclass(frozen=True)
class Predictions:
    """One split's predictions as a suite hands them over.

    `logits` [N, K]: logits (or log-probabilities) of the predicted distribution, as the suite
    scores them; `labels` [N]: the true classes; `scores`: suite metric name -> the score in
    `SCORES` these predictions recompute (what `harness rescore` checks), e.g. {"top1": "accuracy"}."""

    logits: Any
    labels: Any
    scores: Mapping[str, str] = field(default_factory=dict)


def schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("split", pa.string()), ("idx", pa.int32()), ("label", pa.int32()), ("pred", pa.int32()),
            ("confidence", pa.float32()), ("nll", pa.float32()), ("brier", pa.float32()), ("probs", pa.list_(pa.float16())),
        ]
    )


# ---------------------------------------------------------------------------------------------
# from a suite's tensors to the stored file
# ---------------------------------------------------------------------------------------------


def _as_predictions(split: str, value: Any) -> Predictions:
    if isinstance(value, Predictions):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return Predictions(*value)
    raise BadPredictions(f"predictions[{split!r}] must be (logits, labels) or harness.predictions.Predictions, got {type(value).__name__}")


def _columns(split: str, p: Predictions) -> dict[str, np.ndarray]:
    import torch

    logits, labels = torch.as_tensor(p.logits).detach().cpu(), torch.as_tensor(p.labels).detach().cpu()
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels) or logits.shape[1] < 1:
        raise BadPredictions(f"predictions[{split!r}]: logits must be [N, K] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1])):
        raise BadPredictions(f"predictions[{split!r}]: labels must be integers in [0, {logits.shape[1]})")
    labels = labels.long()
    confidence, pred = logits.float().softmax(1).max(1)  # exactly what harness.metrics' ECE bins
    log_p = torch.log_softmax(logits.double(), 1)
    nll = -log_p.gather(1, labels.view(-1, 1)).squeeze(1)
    p64 = log_p.exp()
    brier = (p64 - torch.zeros_like(p64).scatter_(1, labels.view(-1, 1), 1.0)).pow(2).sum(1)
    k = logits.shape[1]
    return {
        "idx": np.arange(len(labels), dtype=np.int32),
        "label": labels.numpy().astype(np.int32),
        "pred": pred.numpy().astype(np.int32),
        "confidence": confidence.numpy().astype(np.float32),
        "nll": nll.numpy().astype(np.float32),
        "brier": brier.numpy().astype(np.float32),
        "probs": p64.numpy().astype(np.float16) if k <= MAX_PROBABILITY_CLASSES else None,
    }


def _digest(splits: dict[str, dict[str, np.ndarray]]) -> str:
    """SHA-256 of the stored values (not of the file's bytes, which depend on the Parquet writer)."""
    h = hashlib.sha256()
    for name in sorted(splits):
        cols = splits[name]
        h.update(f"{name}:{len(cols['idx'])};".encode())
        for column in COLUMNS[1:]:
            values = cols[column]
            h.update(column.encode() + (b"-" if values is None else np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()))
    return h.hexdigest()


def encode(predictions: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """(the record's summary, the Parquet file's bytes) of a suite's `RunOutput.predictions`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not predictions:
        raise BadPredictions("no predictions to store")
    splits: dict[str, dict[str, np.ndarray]] = {}
    summary_splits: dict[str, Any] = {}
    classes = set()
    for name in sorted(predictions):
        if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name):
            raise BadPredictions(f"split name {name!r}: expected lowercase letters, digits and '_' (at most 32), e.g. test")
        p = _as_predictions(name, predictions[name])
        unknown = sorted(set(p.scores.values()) - set(SCORES))
        if unknown:
            raise BadPredictions(f"predictions[{name!r}] name unknown score(s) {', '.join(unknown)}; known: {', '.join(SCORES)}")
        splits[name] = _columns(name, p)
        classes.add(int(np.asarray(p.logits.shape[1] if hasattr(p.logits, "shape") else len(p.logits[0]))))
        summary_splits[name] = {"rows": len(splits[name]["idx"]), "scores": dict(sorted(p.scores.items()))}
    if len(classes) != 1:
        raise BadPredictions(f"every split's predictions must have the same number of classes, got {sorted(classes)}")
    (k,) = classes
    rows = sum(s["rows"] for s in summary_splits.values())
    if rows > MAX_ROWS:
        raise BadPredictions(f"{rows} predictions, over the limit of {MAX_ROWS}")
    arrays = {c: [] for c in COLUMNS}
    for name, cols in splits.items():
        arrays["split"].append(pa.array([name] * len(cols["idx"]), pa.string()))
        for c in COLUMNS[1:-1]:
            arrays[c].append(pa.array(cols[c]))
        if cols["probs"] is None:
            arrays["probs"].append(pa.nulls(len(cols["idx"]), pa.list_(pa.float16())))
        else:
            flat = pa.array(cols["probs"].reshape(-1), pa.float16())
            offsets = pa.array(np.arange(0, flat.__len__() + 1, k, dtype=np.int32))
            arrays["probs"].append(pa.ListArray.from_arrays(offsets, flat))
    table = pa.Table.from_arrays([pa.concat_arrays(arrays[c]) for c in COLUMNS], schema=schema())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=False)
    summary = {"sha256": _digest(splits), "num_classes": k, "probabilities": k <= MAX_PROBABILITY_CLASSES, "splits": summary_splits}
    return summary, sink.getvalue().to_pybytes()


# ---------------------------------------------------------------------------------------------
# reading a stored (or received) file back, checked against its record's summary
# ---------------------------------------------------------------------------------------------


def decode(data: bytes, summary: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """The checked columns of a predictions file, by split; BadPredictions saying what is wrong."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(data) > MAX_BYTES:
        raise BadPredictions(f"{len(data)} bytes, over the limit of {MAX_BYTES}")
    try:
        reader = pq.ParquetFile(pa.BufferReader(data))
        found = reader.schema_arrow
    except Exception as exc:  # whatever a malformed file makes the Parquet reader raise
        raise BadPredictions(f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    expected = schema()
    if [(f.name, f.type) for f in found] != [(f.name, f.type) for f in expected]:
        have = ", ".join(f"{f.name}: {f.type}" for f in found)[:300]
        raise BadPredictions(f"columns are ({have}); expected ({', '.join(f'{f.name}: {f.type}' for f in expected)})")
    rows = reader.metadata.num_rows
    k = summary["num_classes"]
    want = {name: s["rows"] for name, s in summary["splits"].items()}
    if rows > MAX_ROWS or rows != sum(want.values()):
        raise BadPredictions(f"{rows} rows; its record says {sum(want.values())} (at most {MAX_ROWS})")
    try:
        table = reader.read()
    except Exception as exc:
        raise BadPredictions(f"unreadable Parquet data ({type(exc).__name__}: {exc})") from None
    split_col = table.column("split").to_numpy(zero_copy_only=False)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, n in want.items():
        mask = split_col == name
        if int(mask.sum()) != n:
            raise BadPredictions(f"split {name!r} has {int(mask.sum())} rows; its record says {n}")
        part = table.filter(pa.array(mask))
        cols: dict[str, Any] = {}
        for c in COLUMNS[1:-1]:
            column = part.column(c)
            if column.null_count:
                raise BadPredictions(f"column {c} of split {name!r} has missing values")
            cols[c] = column.to_numpy()
        order = np.argsort(cols["idx"], kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
        if not np.array_equal(cols["idx"], np.arange(n, dtype=np.int32)):
            raise BadPredictions(f"idx of split {name!r} is not 0..{n - 1}, each once")
        for c in ("label", "pred"):
            if n and (cols[c].min() < 0 or cols[c].max() >= k):
                raise BadPredictions(f"{c} of split {name!r} outside [0, {k})")
        if not (np.all(np.isfinite(cols["confidence"])) and np.all((cols["confidence"] >= 0) & (cols["confidence"] <= 1))):
            raise BadPredictions(f"confidence of split {name!r} outside [0, 1]")
        if np.any(np.isnan(cols["nll"])) or np.any(cols["nll"] < 0):
            raise BadPredictions(f"nll of split {name!r} is negative or not a number")
        if not (np.all(np.isfinite(cols["brier"])) and np.all((cols["brier"] >= 0) & (cols["brier"] <= 2.0001))):
            raise BadPredictions(f"brier of split {name!r} outside [0, 2]")
        probs = part.column("probs").combine_chunks()
        if summary["probabilities"]:
            if probs.null_count or (n and not np.all(np.diff(probs.offsets.to_numpy()) == k)):
                raise BadPredictions(f"probs of split {name!r} must hold {k} probabilities per sample")
            flat = probs.flatten().to_numpy(zero_copy_only=False)
            if flat.size and not (np.all(np.isfinite(flat)) and flat.min() >= 0 and flat.max() <= 1):
                raise BadPredictions(f"probs of split {name!r} outside [0, 1]")
            cols["probs"] = flat.reshape(n, k)[order]
        else:
            if probs.null_count != n:
                raise BadPredictions(f"probs of split {name!r} must be empty when its record stores no probabilities")
            cols["probs"] = None
        out[name] = cols
    extra = set(np.unique(split_col).tolist()) - set(want)
    if extra:
        raise BadPredictions(f"split(s) {', '.join(sorted(map(str, extra)))} that its record does not name")
    if _digest(out) != summary["sha256"]:
        raise BadPredictions("its values do not match the digest its record holds (changed or replaced after the run)")
    return out


def table_rows(run_id: str, splits: dict[str, dict[str, np.ndarray]]) -> Any:
    """The database's rows (`predictions` table) of one run's checked predictions, as a DataFrame."""
    import pandas as pd

    frames = []
    for name in sorted(splits):
        cols = splits[name]
        frames.append(pd.DataFrame({
            "run_id": run_id, "split": name, "idx": cols["idx"].astype(np.int32), "label": cols["label"].astype(np.int32),
            "pred": cols["pred"].astype(np.int32), "confidence": cols["confidence"], "nll": cols["nll"], "brier": cols["brier"],
        }))
    return pd.concat(frames, ignore_index=True) if frames else empty_rows()


def empty_rows() -> Any:
    import pandas as pd

    return pd.DataFrame({
        "run_id": pd.Series(dtype=str), "split": pd.Series(dtype=str), "idx": pd.Series(dtype=np.int32), "label": pd.Series(dtype=np.int32),
        "pred": pd.Series(dtype=np.int32), "confidence": pd.Series(dtype=np.float32), "nll": pd.Series(dtype=np.float32),
        "brier": pd.Series(dtype=np.float32),
    })


# ---------------------------------------------------------------------------------------------
# scores recomputed from stored predictions
# ---------------------------------------------------------------------------------------------


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """`harness.metrics.expected_calibration_error` from the stored confidences (the same float32
    operations in the same order, so the same value)."""
    import itertools

    import torch

    conf = torch.from_numpy(np.ascontiguousarray(confidence, dtype=np.float32))
    hit = torch.from_numpy(np.ascontiguousarray(correct)).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (hit[in_bin].mean() - conf[in_bin].mean()).abs()
    return float(ece)


def score(name: str, label: np.ndarray, pred: np.ndarray, confidence: np.ndarray, nll: np.ndarray, brier: np.ndarray) -> float:
    """One score of `SCORES` from a split's stored columns."""
    if not len(label):
        return math.nan
    if name == "accuracy":
        return float(np.mean(pred == label))
    if name == "ece":
        return expected_calibration_error(confidence, pred == label)
    if name == "nll":
        return float(np.mean(nll.astype(np.float64)))
    if name == "brier":
        return float(np.mean(brier.astype(np.float64)))
    raise ValueError(f"unknown score {name!r}; known: {', '.join(SCORES)}")


@dataclass(frozen=True)
class Rescored:
    run_id: str
    suite: str
    entry: str
    seed: int
    split: str
    score: str
    metric: str | None  # the stored metric this score recomputes, if the suite named one
    stored: float | None
    rescored: float

    @property
    def diff(self) -> float | None:
        return None if self.stored is None or self.metric is None else self.rescored - self.stored


# float32 rounding of per-sample values: a recomputed score this close to the stored one is the same
TOLERANCE = 1e-5


def rescore(con: Any, *, suite: str | None = None) -> list[Rescored]:
    """Every score of every stored run's predictions (database tables `runs`, `predictions`),
    beside the stored metric each recomputes (as the run's predictions summary names it)."""
    import json

    where, params = "", []
    if suite is not None:
        where, params = " AND r.suite = ?", [suite]
    runs = con.execute(
        "SELECT r.run_id, r.suite, r.entry, r.seed, s.summary FROM runs r JOIN prediction_summaries s USING (run_id) WHERE r.status = 'ok'"
        f"{where} ORDER BY r.suite, r.entry, r.seed, r.run_id",
        params,
    ).fetchall()
    stored = {(rid, name): value for rid, name, value in con.execute(
        "SELECT run_id, name, value FROM metrics WHERE run_id IN (SELECT run_id FROM prediction_summaries)").fetchall()}
    out = []
    for rid, suite_name, entry, seed, summary_text in runs:
        frame = con.execute("SELECT split, label, pred, confidence, nll, brier FROM predictions WHERE run_id = ? ORDER BY split, idx", [rid]).fetchnumpy()
        if not len(frame["split"]):
            continue  # its file was missing or refused when the run was stored
        summary = json.loads(summary_text)
        for split in sorted(set(np.asarray(frame["split"]).tolist())):
            sel = np.asarray(frame["split"]) == split
            cols = {c: np.asarray(frame[c])[sel] for c in ("label", "pred", "confidence", "nll", "brier")}
            by_score = {s: m for m, s in summary["splits"].get(split, {}).get("scores", {}).items()}
            for name in SCORES:
                metric = by_score.get(name)
                value = stored.get((rid, metric)) if metric else None
                out.append(Rescored(rid, suite_name, entry, int(seed), split, name, metric, value, score(name, **cols)))
    return out
