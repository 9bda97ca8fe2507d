"""A result record: its schema (every field's type and range), its validation, and reading a
result file safely.

A record is data from outside as soon as it is read back (a collaborator's folder, a file sent
by mail, a database): it is read only from a regular file under `MAX_RESULT_BYTES` (never a FIFO
or a device), parsed as strict JSON (no NaN or Infinity), checked field by field against
`RECORD_SCHEMA` (a wrong field is named with what it should be), and its spec must be exactly
the canonical form its run id hashes. Nothing is unpickled or executed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from harness import predictions as _predictions

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "diverged", "timeout")
MAX_RESULT_BYTES = 32 * 2**20  # far above any real result file; bounds what a hostile file can make us read
MAX_SEED = 2**31 - 1  # the database stores seeds as INTEGER
RUN_ID = re.compile(r"[0-9a-f]{16}")


class CorruptResult(Exception):
    """A result file that is truncated, malformed or inconsistent with its run id."""


# ---------------------------------------------------------------------------------------------
# the record schema: every field's type and range, checked before a record is stored anywhere
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Check:
    expect = "a value"

    def check(self, value: Any, where: Where) -> None:
        raise NotImplementedError

    def fail(self, value: Any, where: Where) -> None:
        raise CorruptResult(f"{where_text(where)} is {_show(value)}; expected {self.expect}")


# Where a value sits in a record: "record", or (its parent's place, its key or list index). Only a
# failure spells it out: formatting every field's path while checking thousands of records costs more than the checks.
Where = Any


def where_text(where: Where) -> str:
    if not isinstance(where, tuple):
        return str(where)
    parent, key = where
    text = where_text(parent)
    if isinstance(key, int):
        return f"{text}[{key}]"
    return key if text == "record" else f"{text}.{key}"


class _Any(_Check):
    expect = "any JSON value"

    def check(self, value: Any, where: Where) -> None:
        pass


class _Const(_Check):
    def __init__(self, value: Any):
        self.value, self.expect = value, json.dumps(value)

    def check(self, value: Any, where: Where) -> None:
        if type(value) is not type(self.value) or value != self.value:
            self.fail(value, where)


class _Str(_Check):
    def __init__(self, *, choices: tuple[str, ...] | None = None, pattern: re.Pattern[str] | None = None, what: str = "a non-empty string"):
        self.choices, self.pattern = choices, pattern
        self.expect = f"one of {', '.join(choices)}" if choices else what

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, str) or not value:
            self.fail(value, where)
        if (self.choices and value not in self.choices) or (self.pattern and not self.pattern.fullmatch(value)):
            self.fail(value, where)


class _Text(_Check):
    expect = "a string"

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, str):
            self.fail(value, where)


class _Bool(_Check):
    expect = "true or false"

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, bool):
            self.fail(value, where)


class _Int(_Check):
    def __init__(self, low: int, high: int):
        self.low, self.high = low, high
        self.expect = f"an integer in [{low}, {high}]"

    def check(self, value: Any, where: Where) -> None:
        if type(value) is not int or not self.low <= value <= self.high:
            self.fail(value, where)


class _Number(_Check):
    def __init__(self, *, low: float | None = None):
        self.low = low
        self.expect = "a finite number" + (f" >= {low:g}" if low is not None else "")

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):  # numpy floats are floats; a bool is not a number
            self.fail(value, where)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any double
            self.fail(value, where)
        if not math.isfinite(number) or (self.low is not None and number < self.low):
            self.fail(value, where)


class _Timestamp(_Check):
    expect = "an ISO 8601 UTC time such as \"2026-01-31T12:00:00.000000\""

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, str) or not value:
            self.fail(value, where)
        try:
            parsed = dt.datetime.fromisoformat(timestamp_text(value))
        except ValueError:
            self.fail(value, where)
        if parsed.tzinfo is not None:
            self.fail(value, where)


class _Nullable(_Check):
    def __init__(self, inner: _Check):
        self.inner, self.expect = inner, f"{inner.expect} or null"

    def check(self, value: Any, where: Where) -> None:
        if value is not None:
            try:
                self.inner.check(value, where)
            except CorruptResult:
                self.fail(value, where)


class _List(_Check):
    def __init__(self, item: _Check, *, min_len: int = 0):
        self.item, self.min_len = item, min_len
        self.expect = f"a list of {item.expect}" + (f" (at least {min_len})" if min_len else "")
        # a series (finite numbers or nulls) is most of a record's values: a finite float passes
        # without a call; anything else gets the item's own check (and its message)
        self.numbers = isinstance(item, _Nullable) and isinstance(item.inner, _Number) and item.inner.low is None

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, list) or len(value) < self.min_len:
            self.fail(value, where)
        if self.numbers:
            for i, item in enumerate(value):
                if not (type(item) is float and item - item == 0.0) and item is not None:  # x - x is NaN for NaN and infinities
                    self.item.check(item, (where, i))
            return
        for i, item in enumerate(value):
            self.item.check(item, (where, i))


class _Map(_Check):
    """An object whose keys are names (matching `key`, if given) and whose values all follow one check."""

    def __init__(self, value: _Check, *, key: re.Pattern[str] | None = None, min_len: int = 0):
        self.value, self.key, self.min_len = value, key, min_len
        self.expect = f"an object of {value.expect}" + (f" keyed by names matching {key.pattern}" if key else "") + (f" (at least {min_len})" if min_len else "")

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, dict) or len(value) < self.min_len:
            self.fail(value, where)
        for key, item in value.items():
            if self.key is not None and not self.key.fullmatch(key):
                self.fail(value, where)
            self.value.check(item, (where, key))


class _Object(_Check):
    def __init__(self, required: dict[str, _Check], optional: dict[str, _Check] | None = None):
        self.required, self.optional = required, optional or {}
        self.expect = "an object with " + ", ".join(required) if required else "an object"

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, dict):
            self.fail(value, where)
        for key, check in self.required.items():
            if key not in value:
                raise CorruptResult(f"missing field {key!r}" + (f" in {where_text(where)}" if where != "record" else ""))
            check.check(value[key], (where, key))
        for key, check in self.optional.items():
            if key in value:
                check.check(value[key], (where, key))


class _Scalar(_Check):
    expect = "a string, number, boolean or null"

    def check(self, value: Any, where: Where) -> None:
        if value is not None and not isinstance(value, (str, int, float, bool)):
            self.fail(value, where)


_SCALAR = _Scalar()

_SPEC_SCHEMA = _Object(
    {
        "suite": _Str(),
        "suite_version": _Str(),
        "scale": _Str(),
        "variant": _Map(_SCALAR),
        "methods": _List(_Map(_Any()), min_len=1),  # their fields are the spec code's: the canonical check covers them
        "seed": _Int(0, MAX_SEED),
        "recipe": _Object({}, {"dataset": _Str(), "model": _Str()}),
    }
)

# the summary of a run's per-sample predictions (harness.predictions): its file is checked against it
_PREDICTIONS_SCHEMA = _Object(
    {
        "sha256": _Str(pattern=re.compile(r"[0-9a-f]{64}"), what="64 lowercase hexadecimal digits"),
        "num_classes": _Int(1, _predictions.MAX_CLASSES),
        "probabilities": _Bool(),
        "splits": _Map(
            _Object({"rows": _Int(0, _predictions.MAX_ROWS), "scores": _Map(_Str(choices=_predictions.SCORES))}),
            key=_predictions.SPLIT_NAME, min_len=1,
        ),
    }
)

# One result record (schema 1). Fields not listed are kept as they are; `spec` must moreover be
# exactly the canonical form its run id hashes.
RECORD_SCHEMA = _Object(
    {
        "schema": _Const(SCHEMA_VERSION),
        "run_id": _Str(pattern=RUN_ID, what="16 lowercase hexadecimal digits"),
        "spec": _SPEC_SCHEMA,
        "entry": _Str(),
        "variant": _Str(),
        "status": _Str(choices=STATUSES),
        "metrics": _Map(_Object({"value": _Nullable(_Number()), "higher_is_better": _Bool()})),
        "series": _Map(_List(_Nullable(_Number()))),
        "provenance": _Map(_Any()),
        "primary_metric": _Str(),
    },
    {
        "primary_higher_is_better": _Bool(),
        "baseline": _Nullable(_Str()),
        "error": _Nullable(_Text()),
        "info": _Map(_Any()),
        "started_at": _Nullable(_Timestamp()),
        "finished_at": _Nullable(_Timestamp()),
        "duration_s": _Nullable(_Number(low=0)),
        "predictions": _PREDICTIONS_SCHEMA,
    },
)


def _canonical_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def validate_record(record: Any, *, expected_id: str | None = None) -> dict[str, Any]:
    """Check a parsed result record against `RECORD_SCHEMA` and its run id; raise CorruptResult
    saying which field is wrong and what it should be."""
    from harness.spec import RunSpec

    if not isinstance(record, dict):
        raise CorruptResult("not a JSON object")
    if record.get("schema") != SCHEMA_VERSION:
        raise CorruptResult(f"schema {_show(record.get('schema'))}, expected {SCHEMA_VERSION}")
    RECORD_SCHEMA.check(record, "record")
    try:
        spec = RunSpec.from_canonical(record["spec"])
        canonical = spec.canonical()
    except Exception as exc:  # whatever a malformed spec makes the spec code raise
        raise CorruptResult(f"malformed spec: {type(exc).__name__}: {exc}") from None
    if _canonical_text(canonical) != _canonical_text(record["spec"]):
        raise CorruptResult("spec is not in the canonical form its run id hashes (a value of the wrong type, or an unknown field)")
    if spec.run_id != record["run_id"]:
        raise CorruptResult(f"run id {record['run_id']} does not match the hash of its spec ({spec.run_id})")
    if expected_id is not None and record["run_id"] != expected_id:
        raise CorruptResult(f"file of run {expected_id} holds run {record['run_id']}")
    summary = record.get("predictions")
    if summary is not None:
        if summary["probabilities"] != (summary["num_classes"] <= _predictions.MAX_PROBABILITY_CLASSES):
            raise CorruptResult(f"predictions.probabilities must say whether num_classes <= {_predictions.MAX_PROBABILITY_CLASSES}")
        if sum(s["rows"] for s in summary["splits"].values()) > _predictions.MAX_ROWS:
            raise CorruptResult(f"predictions hold more than {_predictions.MAX_ROWS} rows")
    return record


def derived_names(record: dict[str, Any]) -> tuple[str, str]:
    """(entry, variant label) as the record's spec defines them; a record cannot choose its own row."""
    from harness.spec import RunSpec

    spec = RunSpec.from_canonical(record["spec"])
    return spec.entry, spec.variant_label


def reject_json_constant(name: str) -> Any:
    """For `json.loads(parse_constant=...)`: NaN and Infinity are not JSON numbers; refuse them."""
    raise ValueError(f"{name} is not a number JSON allows")


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; CorruptResult otherwise.

    A FIFO would block a reader forever and a device (a link to /dev/zero) never ends: both are
    refused before they are opened for reading, and the open file is checked again."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise CorruptResult(f"cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CorruptResult("not a regular file (a FIFO, device or folder); only regular files are read")
    if info.st_size > limit:
        raise CorruptResult(f"{info.st_size} bytes, over the limit of {limit} bytes")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CorruptResult(f"cannot read it ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
            raise CorruptResult("not a regular file (a FIFO, device or folder); only regular files are read")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise CorruptResult(f"cannot read it ({exc.strerror})") from None
    finally:
        os.close(fd)
    if size > limit:
        raise CorruptResult(f"more than {limit} bytes, over the limit")
    return b"".join(chunks)


_FOLDER = object()  # read_result's default: expect the run id its folder is named after


def read_result(path: Path, *, expected_id: Any = _FOLDER) -> dict[str, Any]:
    """Read and validate one result file. By default a file in a folder named like a run id must
    hold that run; `expected_id=None` accepts any run (a result file given by itself)."""
    return read_result_and_text(path, expected_id=expected_id)[0]


def read_result_and_text(path: Path, *, expected_id: Any = _FOLDER) -> tuple[dict[str, Any], bytes]:
    """`read_result`, and the file's bytes: a copy of a record it does not change can write them as read."""
    if expected_id is _FOLDER:
        expected_id = path.parent.name if RUN_ID.fullmatch(path.parent.name) else None
    data = read_regular_file(path, MAX_RESULT_BYTES)
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=reject_json_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptResult(f"unreadable JSON ({exc})") from None
    return validate_record(record, expected_id=expected_id), data


def json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value



def timestamp_text(text: Any) -> str | None:
    if not text:
        return None
    # DuckDB renders TIMESTAMP as 'YYYY-MM-DD HH:MM:SS[.ffffff]'
    return str(text).replace("T", " ").removesuffix("Z").removesuffix("+00:00")
