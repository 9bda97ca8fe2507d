"""`harness push` / `harness pull`: results and trained-once artifacts to and from any fsspec location.

A location is a URL fsspec understands: a local folder, `memory://...`, `s3://...` (with s3fs),
and first of all the Hugging Face hub through its fsspec filesystem (`huggingface_hub.HfFileSystem`):
`hf://datasets/ORG/REPO`. What a push writes there:

    README.md                                the dataset card (YAML header naming the tables for the hub's viewer)
    results/<digest>.jsonl                   one push's run records, one JSON result record a line
    results/<digest>.predictions.parquet     that push's per-sample predictions (column run_id + harness.predictions' columns)
    tables/{leaderboard,runs,metrics,series,predictions}.parquet   everything at the location, as tables (derived)
    artifacts/<id>.safetensors, artifacts/<id>.json                trained-once models and their cards

The record files are the source of truth and are only ever added (named by the digest of their
content, so two pushes never overwrite each other); the tables and the card are rebuilt by each
push from every record there. A push sends only runs the location lacks (or holds only as not
ok), so pushing again sends nothing; on the hub each file is one commit, and a push writes at most
eight.

A pull reads everything at the location as data from outside: every file is read only up to a size
limit, every record is parsed as strict JSON and checked against the record schema and its run id
(`harness.records`), every predictions table against its schema and the digest its record holds
(`harness.predictions`), and then merged exactly as `harness collect` merges (`harness.collect.merge`):
rows from the spec and the installed suite cards, de-duplicated by run id. A record or file that
fails is refused with its address and the reason; nothing already stored changes. Nothing is
unpickled or executed. A pulled artifact is stored only after its card's key hashes to its id
(`harness.artifacts.artifact_id`) and its weights to the SHA-256 the card holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

RECORDS = "results"
TABLES = "tables"
ARTIFACTS = "artifacts"
CARD = "README.md"
MAX_BUNDLE_BYTES = 1024 * 2**20  # one push's records; each record is at most 32 MiB (harness.records)
MAX_CARD_BYTES = 2**20
MAX_ARTIFACT_BYTES = 16 * 2**30
BUNDLE_NAME = re.compile(r"[0-9a-f]{16}")
ARTIFACT_ID = re.compile(r"[0-9a-f]{16}")
CHUNK = 8 * 2**20


# ---------------------------------------------------------------------------------------------
# locations
# ---------------------------------------------------------------------------------------------


@dataclass
class Location:
    """An fsspec filesystem and the root path of a location on it."""

    fs: Any
    root: str
    url: str

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)

    def address(self, path: str) -> str:
        """A path as the user wrote the location (`hf://datasets/...`), for messages."""
        rel = path[len(self.root.rstrip("/")):].lstrip("/") if self.root and path.startswith(self.root.rstrip("/")) else path
        return f"{self.url.rstrip('/')}/{rel}" if rel else self.url

    def exists(self, path: str) -> bool:
        try:
            return bool(self.fs.exists(path))
        except Exception as exc:  # a filesystem's own errors (network, authentication)
            raise _location_error(self, exc) from None

    def glob(self, pattern: str) -> list[str]:
        try:
            return sorted(self.fs.glob(pattern))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise _location_error(self, exc) from None

    def read(self, path: str, limit: int) -> bytes:
        """The bytes of a regular file of at most `limit` bytes; ValueError saying why not."""
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise ValueError("it does not exist") from None
        except Exception as exc:
            raise _location_error(self, exc) from None
        if info.get("type") != "file":
            raise ValueError(f"not a regular file ({info.get('type')})")
        size = info.get("size")
        if isinstance(size, int) and size > limit:
            raise ValueError(f"{size} bytes, over the limit of {limit} bytes")
        try:
            with self.fs.open(path, "rb") as fh:
                data = fh.read(limit + 1)  # the listed size may lie: never read past the limit
        except Exception as exc:
            raise _location_error(self, exc) from None
        if len(data) > limit:
            raise ValueError(f"more than {limit} bytes, over the limit")
        return data

    def write(self, path: str, data: bytes) -> None:
        try:
            parent = path.rsplit("/", 1)[0]
            if parent and parent != path:
                self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(path, data)
        except Exception as exc:
            raise _location_error(self, exc, writing=self.address(path)) from None


def _location_error(loc: Location, exc: Exception, *, writing: str | None = None) -> HarnessError:
    what = f"writing {writing}" if writing else f"reading {loc.url}"
    hint = ""
    if loc.url.startswith("hf://"):
        hint = (
            "; the Hugging Face hub needs network access (HF_HUB_OFFLINE unset), a token with write access for a push "
            "(`huggingface-cli login` or HF_TOKEN), and an existing dataset repository (`huggingface-cli repo create NAME --type dataset`)"
        )
    return HarnessError(f"{what} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}{hint}")


def open_location(url: str) -> Location:
    """The fsspec filesystem of `url`; a HarnessError naming what to install or fix."""
    import fsspec

    if not url or "=" in url.split("://", 1)[0]:
        raise HarnessError(f"where? give a location such as hf://datasets/ORG/REPO, memory://NAME, s3://BUCKET/PATH or a local folder (got {url!r})")
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise HarnessError(f"{url} needs a package that is not installed: {exc}") from None
    except ValueError as exc:
        raise HarnessError(f"{url} is not a location fsspec knows ({exc}); give hf://datasets/ORG/REPO, memory://NAME, s3://BUCKET/PATH or a local folder") from None
    except Exception as exc:
        raise HarnessError(f"cannot open {url}: {type(exc).__name__}: {exc}") from None
    return Location(fs, root, url)


# ---------------------------------------------------------------------------------------------
# reading a location's results (as data from outside)
# ---------------------------------------------------------------------------------------------


def _bundle_schema() -> Any:
    import pyarrow as pa

    from harness.predictions import schema

    return pa.schema([pa.field("run_id", pa.string()), *schema()])


def _parse_records(data: bytes, where: str, skipped: Any) -> list[tuple[str, dict[str, Any]]]:
    """The valid records of a JSON-lines bundle; each bad line skipped with its line number and reason."""
    from harness.records import CorruptResult, reject_json_constant, validate_record

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        skipped.skip(f"record file {where}", f"not UTF-8 text ({exc})")
        return []
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        what = f"record at line {number} of {where}"
        try:
            record = json.loads(line, parse_constant=reject_json_constant)
            out.append((what, validate_record(record)))
        except (ValueError, RecursionError) as exc:
            skipped.skip(what, f"unreadable JSON ({exc})")
        except CorruptResult as exc:
            skipped.skip(what, str(exc))
    return out


def _bundle_predictions(data: bytes, where: str) -> dict[str, bytes]:
    """Per run id, the bytes of a predictions file holding that run's rows of a bundle's table.
    ValueError if the table is not what a push writes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from harness.predictions import COLUMNS, schema
    from harness.tables import parquet_bytes

    try:
        reader = pq.ParquetFile(pa.BufferReader(data))
        found = reader.schema_arrow
    except Exception as exc:
        raise ValueError(f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    expected = _bundle_schema()
    if [(f.name, f.type) for f in found] != [(f.name, f.type) for f in expected]:
        raise ValueError(f"columns are ({', '.join(f'{f.name}: {f.type}' for f in found)[:300]}); expected those of a harness push")
    try:
        table = reader.read()
    except Exception as exc:
        raise ValueError(f"unreadable Parquet data ({type(exc).__name__}: {exc})") from None
    out = {}
    for run_id in sorted(set(table.column("run_id").to_pylist()) - {None}):
        rows = table.filter(pc.equal(table.column("run_id"), run_id)).select(list(COLUMNS))
        out[run_id] = parquet_bytes(pa.Table.from_arrays(rows.columns, schema=schema()))
    return out


@dataclass
class Remote:
    """What a location holds: checked candidates (harness.collect.Candidate) and what was refused."""

    candidates: list[Any] = field(default_factory=list)
    skipped: Any = None
    notes: Any = None


def read_remote(loc: Location) -> Remote:
    """Every record at a location (pushed bundles, and `runs/<id>/result.json` of a results folder
    stored there), each checked; predictions checked against their records."""
    from harness.collect import Candidate, _Notes, checked_predictions, without_predictions
    from harness.predictions import FILE_NAME, MAX_BYTES, BadPredictions
    from harness.records import MAX_RESULT_BYTES, RUN_ID, CorruptResult, reject_json_constant, validate_record
    from harness.store import SyncReport

    remote = Remote(skipped=SyncReport(), notes=_Notes())
    skipped, notes = remote.skipped, remote.notes
    for path in loc.glob(loc.path(RECORDS, "*.jsonl")):
        where = loc.address(path)
        name = path.rsplit("/", 1)[-1].removesuffix(".jsonl")
        try:
            data = loc.read(path, MAX_BUNDLE_BYTES)
        except ValueError as exc:
            skipped.skip(f"record file {where}", str(exc))
            continue
        records = _parse_records(data, where, skipped)
        wanted = [r for _, r in records if r.get("predictions") is not None]
        per_run: dict[str, bytes] = {}
        problem = None
        if wanted:
            table_path = loc.path(RECORDS, f"{name}.predictions.parquet")
            if not BUNDLE_NAME.fullmatch(name) or not loc.exists(table_path):
                problem = None  # no table: the runs come without predictions (noted below)
            else:
                try:
                    per_run = _bundle_predictions(loc.read(table_path, MAX_BUNDLE_BYTES), loc.address(table_path))
                except ValueError as exc:
                    problem = f"its predictions file {loc.address(table_path)} is refused: {exc}"
        for what, record in records:
            data_bytes = None
            if record.get("predictions") is not None:
                if problem is not None:
                    skipped.skip(what, f"{problem}; run {record['run_id']} is not pulled")
                    continue
                if record["run_id"] not in per_run:
                    record = without_predictions(record, notes, "its push holds no predictions rows for it")
                else:
                    try:
                        data_bytes = checked_predictions(per_run[record["run_id"]], record)
                    except BadPredictions as exc:
                        skipped.skip(what, f"its predictions do not match it ({exc}); run {record['run_id']} is not pulled")
                        continue
            remote.candidates.append(Candidate(what, record, data_bytes))
    # a results folder stored at the location (e.g. copied to a bucket)
    for path in loc.glob(loc.path("runs", "*", "result.json")):
        where = loc.address(path)
        folder = path.rsplit("/", 2)[-2]
        try:
            record = json.loads(loc.read(path, MAX_RESULT_BYTES).decode("utf-8"), parse_constant=reject_json_constant)
            record = validate_record(record, expected_id=folder if RUN_ID.fullmatch(folder) else None)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            skipped.skip(f"result file {where}", f"unreadable ({exc})")
            continue
        except CorruptResult as exc:
            skipped.skip(f"result file {where}", str(exc))
            continue
        data_bytes = None
        if record.get("predictions") is not None:
            beside = path.rsplit("/", 1)[0] + "/" + FILE_NAME
            if not loc.exists(beside):
                record = without_predictions(record, notes, f"no {FILE_NAME} beside its result file")
            else:
                try:
                    data_bytes = checked_predictions(loc.read(beside, MAX_BYTES), record)
                except (ValueError, BadPredictions) as exc:
                    skipped.skip(f"predictions file {loc.address(beside)}", f"{exc}; its run {record['run_id']} is not pulled")
                    continue
        remote.candidates.append(Candidate(where, record, data_bytes))
    return remote


# ---------------------------------------------------------------------------------------------
# pull and push of results
# ---------------------------------------------------------------------------------------------


def pull(src: str, results: Path, *, suites: Iterable[Any] | None = None) -> Any:
    """Merge the results at `src` into the results folder `results` (a harness.collect.CollectReport)."""
    from harness.collect import CollectReport, merge

    loc = open_location(src)
    remote = read_remote(loc)
    report = CollectReport(skipped=remote.skipped)
    if not remote.candidates and not remote.skipped.problems:
        raise HarnessError(f"{src} holds no harness results (expected {src.rstrip('/')}/{RECORDS}/*.jsonl from `harness push`, or runs/<run_id>/result.json)")
    return merge(remote.candidates, results, suites=suites, report=report, notes=remote.notes)


@dataclass
class PushReport:
    url: str
    pushed: int = 0  # runs sent by this push
    with_predictions: int = 0
    already: int = 0  # runs the location held already
    total: int = 0  # runs at the location after the push
    files: list[str] = field(default_factory=list)  # what was written
    problems: list[str] = field(default_factory=list)


def _best(candidates: Iterable[Any]) -> dict[str, Any]:
    """One candidate per run id: the first, unless a later one succeeded where it did not."""
    best: dict[str, Any] = {}
    for c in candidates:
        held = best.get(c.record["run_id"])
        if held is None or (held.record["status"] != "ok" and c.record["status"] == "ok"):
            best[c.record["run_id"]] = c
    return best


def _local_candidates(results: Path, report: PushReport) -> list[Any]:
    from harness.collect import Candidate
    from harness.predictions import MAX_BYTES, BadPredictions
    from harness.records import CorruptResult, read_regular_file
    from harness.store import PREDICTIONS_FILE, ResultStore

    store = ResultStore(results)
    records, scanned = store.scan_report()
    report.problems += scanned.problems
    if not records and not scanned.problems:
        raise HarnessError(f"no result files in {store.runs_dir}; run `harness run suite=...` (results={results}) first")
    out = []
    for rid in sorted(records):
        record, data = records[rid], None
        if record.get("predictions") is not None:
            path = store.runs_dir / rid / PREDICTIONS_FILE
            try:
                store.read_predictions(record)
                data = read_regular_file(path, MAX_BYTES)
            except (BadPredictions, CorruptResult) as exc:
                report.problems.append(f"pushed run {rid} without its predictions: {path}: {exc}")
                record = {k: v for k, v in record.items() if k != "predictions"}
        out.append(Candidate(str(store.runs_dir / rid / "result.json"), record, data))
    return out


def push(results: Path, dest: str) -> PushReport:
    """Send the runs of the results folder `results` that `dest` lacks; rebuild its tables and card."""
    import pyarrow as pa

    from harness.predictions import decode
    from harness.tables import database_tables, memory_database, parquet_bytes

    report = PushReport(dest)
    local = _local_candidates(results, report)
    loc = open_location(dest)
    remote = read_remote(loc)
    report.problems += [f"at {dest}: {p}" for p in remote.skipped.problems]
    held = _best(remote.candidates)
    new = [c for c in local if c.record["run_id"] not in held or (held[c.record["run_id"]].record["status"] != "ok" and c.record["status"] == "ok")]
    report.already = len(local) - len(new)
    if new:
        lines = "".join(json.dumps(c.record, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n" for c in new).encode("utf-8")
        name = hashlib.sha256(lines).hexdigest()[:16]
        with_predictions = [c for c in new if c.predictions is not None]
        if with_predictions:  # first, so that no reader sees a record without the predictions it names
            tables = []
            for c in with_predictions:
                import pyarrow.parquet as pq

                table = pq.read_table(pa.BufferReader(c.predictions))
                tables.append(table.add_column(0, "run_id", pa.array([c.record["run_id"]] * table.num_rows, pa.string())))
            bundle = pa.concat_tables(tables).cast(_bundle_schema())
            path = loc.path(RECORDS, f"{name}.predictions.parquet")
            loc.write(path, parquet_bytes(bundle))
            report.files.append(loc.address(path))
        path = loc.path(RECORDS, f"{name}.jsonl")
        loc.write(path, lines)
        report.files.append(loc.address(path))
        report.pushed, report.with_predictions = len(new), len(with_predictions)
    everything = _best([*held.values(), *new])
    report.total = len(everything)
    if new or not loc.exists(loc.path(CARD)):
        predictions = {rid: decode(c.predictions, c.record["predictions"]) for rid, c in everything.items() if c.predictions is not None}
        con = memory_database([c.record for c in everything.values()], predictions)
        try:
            for file_name, data in database_tables(con).items():
                path = loc.path(TABLES, file_name)
                loc.write(path, data)
                report.files.append(loc.address(path))
            card = dataset_card(con, dest)
        finally:
            con.close()
        loc.write(loc.path(CARD), card.encode("utf-8"))
        report.files.append(loc.address(loc.path(CARD)))
    return report


def dataset_card(con: Any, url: str) -> str:
    """The location's README.md: a hub dataset card whose YAML header names the tables (for the
    dataset viewer), what the files are, how to pull them, and the leaderboards in markdown."""
    from harness.leaderboard import build_boards, render

    boards = build_boards(con)
    runs, ok = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM runs").fetchone()
    suites = [s for (s,) in con.execute("SELECT DISTINCT suite FROM runs ORDER BY 1").fetchall()]
    configs = "".join(
        f"- config_name: {name}\n  data_files: {TABLES}/{name}.parquet\n" + ("  default: true\n" if name == "leaderboard" else "")
        for name in ("leaderboard", "runs", "metrics", "series", "predictions")
    )
    shown = boards[:20]
    more = f"\n({len(boards) - len(shown)} more leaderboard(s) in `{TABLES}/leaderboard.parquet`.)\n" if len(boards) > len(shown) else ""
    return (
        f"---\nconfigs:\n{configs}tags:\n- harness\n- leaderboard\n- benchmark\n---\n\n"
        "# harness results\n\n"
        f"{runs} run(s) ({ok} ok) of the suite(s) {', '.join(suites) or '-'}, published with `harness push`. Every run is "
        "identified by the hash of its canonical spec; its record holds the spec, metrics, curves and provenance.\n\n"
        f"- `{RECORDS}/*.jsonl`: the run records (the source of truth; one JSON record a line), "
        f"`{RECORDS}/*.predictions.parquet`: per-sample test predictions of the runs that store them\n"
        f"- `{TABLES}/*.parquet`: the same as tables (leaderboard, runs, metrics, series, predictions), rebuilt by every push\n"
        f"- `{ARTIFACTS}/`: trained-once models (safetensors) and their cards, when pushed\n\n"
        f"Reproduce the leaderboards locally:\n\n```bash\nharness pull {url}\nharness leaderboard\n```\n\n"
        "## Leaderboards\n\n" + (render(shown, "markdown") if shown else "No runs yet.\n") + more
    )


# ---------------------------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------------------------


@dataclass
class ArtifactReport:
    done: list[str] = field(default_factory=list)  # artifact ids pushed or pulled
    present: list[str] = field(default_factory=list)  # already there with the same card
    refused: list[str] = field(default_factory=list)  # "<id>: why"


def _local_artifact_ids(folder: Path, ids: list[str]) -> list[str]:
    if ids != ["all"]:
        return ids
    return sorted(p.stem for p in folder.glob("*.json") if ARTIFACT_ID.fullmatch(p.stem))


def push_artifacts(cache_dir: Path, dest: str, ids: list[str]) -> ArtifactReport:
    """Send trained-once models (weights and a card with the key that made them and the SHA-256 of the weights)."""
    from harness.artifacts import ARTIFACT_FORMAT, artifact_id, weights_sha256

    folder = Path(cache_dir) / "artifacts"
    loc = open_location(dest)
    report = ArtifactReport()
    chosen = _local_artifact_ids(folder, ids)
    if not chosen:
        raise HarnessError(f"no artifacts in {folder}; they are made by runs that train a model once (e.g. suite=ood, suite=unlearning)")
    for aid in chosen:
        weights, sidecar = folder / f"{aid}.safetensors", folder / f"{aid}.json"
        if not ARTIFACT_ID.fullmatch(aid) or not weights.is_file() or not sidecar.is_file():
            report.refused.append(f"{aid}: no such artifact in {folder} (expected {aid}.safetensors and {aid}.json)")
            continue
        try:
            meta = json.loads(sidecar.read_text())
            key = meta["key"]
            if artifact_id(key) != aid:
                raise ValueError(f"its key hashes to {artifact_id(key)}, not {aid}")
        except (ValueError, KeyError, TypeError) as exc:
            report.refused.append(f"{aid}: its card {sidecar} is not usable ({exc})")
            continue
        card = {"artifact_id": aid, "format": ARTIFACT_FORMAT, "key": key, "facts": meta.get("facts", {}),
                "weights_sha256": weights_sha256(weights), "weights_bytes": weights.stat().st_size}
        card_bytes = json.dumps(card, sort_keys=True, indent=1).encode("utf-8")
        card_path = loc.path(ARTIFACTS, f"{aid}.json")
        if loc.exists(card_path):
            try:
                if json.loads(loc.read(card_path, MAX_CARD_BYTES)).get("weights_sha256") == card["weights_sha256"]:
                    report.present.append(aid)
                    continue
            except ValueError:
                pass  # a broken card there: replace it
        try:
            loc.fs.makedirs(loc.path(ARTIFACTS), exist_ok=True)
            loc.fs.put_file(str(weights), loc.path(ARTIFACTS, f"{aid}.safetensors"))  # first: a card never names missing weights
        except Exception as exc:
            raise _location_error(loc, exc, writing=loc.address(loc.path(ARTIFACTS, f"{aid}.safetensors"))) from None
        loc.write(card_path, card_bytes)
        report.done.append(aid)
    return report


def _check_card(data: bytes, aid: str) -> dict[str, Any]:
    from harness.artifacts import artifact_id
    from harness.records import reject_json_constant

    card = json.loads(data.decode("utf-8"), parse_constant=reject_json_constant)
    if not isinstance(card, dict) or not isinstance(card.get("key"), dict):
        raise ValueError("its card holds no key (an object)")
    actual = artifact_id(card["key"])
    if actual != aid:
        raise ValueError(f"its card's key hashes to {actual}, not {aid}: it is not the model that id names")
    digest = card.get("weights_sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("its card holds no weights_sha256 (64 hexadecimal digits)")
    if not isinstance(card.get("facts", {}), dict):
        raise ValueError("its card's facts are not an object")
    return card


def pull_artifacts(src: str, cache_dir: Path, ids: list[str]) -> ArtifactReport:
    """Fetch trained-once models into `cache_dir/artifacts`, each verified against its id and its
    weights' SHA-256 before it is stored (so before any run can use it)."""
    from safetensors import safe_open

    from harness.artifacts import weights_sha256

    loc = open_location(src)
    folder = Path(cache_dir) / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    report = ArtifactReport()
    if ids == ["all"]:
        ids = sorted({p.rsplit("/", 1)[-1].removesuffix(".json") for p in loc.glob(loc.path(ARTIFACTS, "*.json"))} )
        if not ids:
            raise HarnessError(f"{src} holds no artifacts (expected {src.rstrip('/')}/{ARTIFACTS}/<id>.json from `harness push ... artifacts=...`)")
    for aid in ids:
        if not ARTIFACT_ID.fullmatch(aid):
            report.refused.append(f"{aid}: not an artifact id (16 hexadecimal digits)")
            continue
        card_path, weights_path = loc.path(ARTIFACTS, f"{aid}.json"), loc.path(ARTIFACTS, f"{aid}.safetensors")
        try:
            card = _check_card(loc.read(card_path, MAX_CARD_BYTES), aid)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            report.refused.append(f"{aid}: {loc.address(card_path)}: {exc}")
            continue
        local_weights, local_card = folder / f"{aid}.safetensors", folder / f"{aid}.json"
        if local_weights.is_file() and local_card.is_file():
            try:
                if json.loads(local_card.read_text()).get("key") == card["key"] and weights_sha256(local_weights) == card["weights_sha256"]:
                    report.present.append(aid)
                    continue
            except ValueError:
                pass
        tmp = folder / f".{aid}.pull.{os.getpid()}.tmp"
        try:
            h, size = hashlib.sha256(), 0
            try:
                info = loc.fs.info(weights_path)
                if info.get("type") != "file":
                    raise ValueError("its weights are not a regular file")
                with loc.fs.open(weights_path, "rb") as src_fh, open(tmp, "wb") as out:
                    while chunk := src_fh.read(CHUNK):
                        size += len(chunk)
                        if size > MAX_ARTIFACT_BYTES:
                            raise ValueError(f"its weights exceed {MAX_ARTIFACT_BYTES} bytes")
                        h.update(chunk)
                        out.write(chunk)
            except FileNotFoundError:
                raise ValueError(f"{loc.address(weights_path)} does not exist") from None
            except (OSError, RuntimeError) as exc:  # the filesystem's own errors (network, authentication)
                raise _location_error(loc, exc) from None
            if h.hexdigest() != card["weights_sha256"]:
                raise ValueError(f"the SHA-256 of its weights is {h.hexdigest()[:16]}..., not the {card['weights_sha256'][:16]}... its card holds")
            try:  # a safetensors file is a JSON header and raw tensors: parsed as data, never executed
                with safe_open(str(tmp), framework="pt") as weights:
                    list(weights.keys())
            except Exception as exc:
                raise ValueError(f"its weights are not a safetensors file ({exc})") from None
            os.replace(tmp, local_weights)
            sidecar = {"key": card["key"], "facts": card.get("facts", {}), "weights_sha256": card["weights_sha256"]}
            tmp_card = folder / f".{aid}.pull.{os.getpid()}.json.tmp"
            tmp_card.write_text(json.dumps(sidecar, sort_keys=True, indent=1))
            os.replace(tmp_card, local_card)
            report.done.append(aid)
        except ValueError as exc:
            report.refused.append(f"{aid}: {exc}")
        finally:
            if tmp.exists():
                tmp.unlink()
    return report
