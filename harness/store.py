"""Result files and the DuckDB database derived from them.

`<results>/runs/<run_id>/result.json` is the source of truth: the coordinator writes it
atomically (temporary file + fsync + rename) when a run ends, so a killed run leaves nothing
half-written, and a failed write leaves no temporary behind. The database
`<results>/harness.duckdb` is derived: `sync()` ingests every valid result file that it does
not hold yet, and it can always be rebuilt from the files; a database that is missing or
unreadable (truncated, corrupt) is rebuilt from them with a warning, the unreadable one kept
aside. Only the coordinating process writes the database (DuckDB allows one writing process
per file); it holds the connection only while ingesting.

Everything read here is data, never code: result files are read and checked as
`harness.records` says (regular files of bounded size, strict JSON, every field against
`RECORD_SCHEMA`) before anything is stored, and every DuckDB connection is opened with external
access and extension loading switched off and locked, so a view or macro inside a database
cannot read a file; a database holding views or macros is not one harness wrote, and is rebuilt.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import math
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import HarnessError
from harness.predictions import FILE_NAME as PREDICTIONS_FILE
from harness.predictions import MAX_BYTES as MAX_PREDICTIONS_BYTES
from harness.predictions import PAYLOAD_KEY as PREDICTIONS_PAYLOAD
from harness.predictions import BadPredictions
from harness.predictions import decode as decode_predictions
from harness.records import (  # noqa: F401 - the record's names are also the store's
    MAX_RESULT_BYTES,
    RECORD_SCHEMA,
    RUN_ID,
    SCHEMA_VERSION,
    STATUSES,
    CorruptResult,
    derived_names,
    json_safe,
    read_regular_file,
    read_result,
    reject_json_constant,
    timestamp_text,
    validate_record,
)

DONE_STATUSES = ("ok", "diverged")  # a re-run skips these; failed/timed-out runs are tried again
DB_NAME = "harness.duckdb"
CLAIM_TTL_OTHER_HOST_S = 24 * 3600  # a claim from another machine (shared folder) expires after a day

# Every connection to a database: no file access beyond the database itself, no extension
# installed or loaded on demand, and settings locked so SQL inside the file cannot undo this.
SAFE_DUCKDB_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}

_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    suite VARCHAR NOT NULL,
    suite_version VARCHAR NOT NULL,
    scale VARCHAR NOT NULL,
    variant VARCHAR NOT NULL,
    entry VARCHAR NOT NULL,
    seed INTEGER NOT NULL,
    dataset VARCHAR,
    model VARCHAR,
    recipe_id VARCHAR NOT NULL,
    primary_metric VARCHAR NOT NULL,
    primary_higher_is_better BOOLEAN NOT NULL,
    status VARCHAR NOT NULL,
    error VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    duration_s DOUBLE,
    spec VARCHAR NOT NULL,        -- canonical JSON: what the run id hashes
    provenance VARCHAR NOT NULL,  -- JSON: versions, device, host, git commit, plugin packages
    info VARCHAR,                 -- JSON: facts the suite recorded (class counts, ...)
    record_digest VARCHAR NOT NULL, -- hash of the result file's record: re-ingest when it changes
    baseline VARCHAR              -- the suite's baseline entry when the run was made (for paired tests)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE,                 -- NULL where undefined (e.g. no few-shot class)
    higher_is_better BOOLEAN NOT NULL,
    position INTEGER NOT NULL,    -- the suite's order of its metrics, for display
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS series (
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    idx INTEGER NOT NULL,
    value DOUBLE
);
CREATE TABLE IF NOT EXISTS prediction_summaries (  -- runs whose per-sample predictions are stored below
    run_id VARCHAR PRIMARY KEY,
    summary VARCHAR NOT NULL      -- JSON: the record's predictions summary (splits, rows, the metrics each recomputes)
);
CREATE TABLE IF NOT EXISTS predictions (  -- per-sample predictions (runs/<run_id>/predictions.parquet, less the probabilities)
    run_id VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    pred INTEGER NOT NULL,
    confidence FLOAT,
    nll FLOAT,
    brier FLOAT
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS result_files (  -- the file each stored run was last read from: sync reads a file again only when this changes
    run_id VARCHAR PRIMARY KEY,   -- runs/<run_id>/result.json
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    ctime_ns BIGINT NOT NULL,     -- set by the kernel on every change, so a restored mtime does not hide one
    inode UBIGINT NOT NULL,       -- an atomic replace (harness's writes) always brings a new inode
    checked_ns BIGINT NOT NULL,   -- the folder's clock just before the state was taken (see KnownFile.vouches_for)
    record_digest VARCHAR NOT NULL -- what the file held; it vouches for the runs row only while they are equal
);
"""


# ---------------------------------------------------------------------------------------------
# processes and claims
# ---------------------------------------------------------------------------------------------

_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    try:  # a zombie (ended, not yet reaped by its parent) is not alive
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def _process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, Linux); tells a live process from a new one
    that reused a dead one's pid. None where /proc is not available."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ClaimHolder:
    """Who holds a run's claim: the coordinating process, its host and since when."""

    pid: int | None
    host: str
    since: float
    worker_pid: int | None = None

    def describe(self) -> str:
        when = dt.datetime.fromtimestamp(self.since, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if self.since else "an unknown time"
        ago = max(0.0, time.time() - self.since) if self.since else None
        age = "" if ago is None else f", {_fmt_age(ago)} ago"
        where = "this host" if self.host == _HOST else f"host {self.host}"
        return f"process {self.pid} on {where} (claimed {when}{age})"


def _fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _read_claim(path: Path) -> dict[str, Any] | None:
    """The claim's content; None when there is no claim; {} when it cannot be read (stale)."""
    try:
        owner = json.loads(read_regular_file(path, 1 << 16))
    except CorruptResult:
        return None if not os.path.lexists(path) else {}
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _claim_is_stale(owner: dict[str, Any]) -> bool:
    try:
        pid, host, since = int(owner["pid"]), str(owner["host"]), float(owner.get("since", 0))
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: its writer died mid-write, or it is not a claim
    if host != _HOST:
        return time.time() - since > CLAIM_TTL_OTHER_HOST_S
    if not _pid_alive(pid):
        return True
    started = owner.get("started")
    return started is not None and _process_start(pid) not in (None, started)  # the pid was reused


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _leftover_temporary(path: Path, own: Path) -> bool:
    """A `.result.json.HOST.PID.tmp` (or `.claim...`) file whose writer is gone: a dead process of
    this host, or a day old from another host. Names without a host come from this host."""
    name = path.name
    prefix = next((f".{n}." for n in ("result.json", "claim", PREDICTIONS_FILE) if name.startswith(f".{n}.")), None)
    if path == own or prefix is None or not name.endswith(".tmp"):
        return False
    host, _, pid_text = name[len(prefix) : -len(".tmp")].rpartition(".")
    if not pid_text.isdigit():
        return False
    if host in ("", _HOST):
        return not _pid_alive(int(pid_text))
    try:
        return time.time() - path.stat().st_mtime > CLAIM_TTL_OTHER_HOST_S
    except OSError:
        return False


def _os_error(exc: OSError, doing: str, root: Path) -> HarnessError:
    """What an operating-system error on the results folder means for the user, and the way out."""
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", -1):
        return HarnessError(
            f"no space left on the device of {root} while {doing}; free some space and run the same command again "
            "(every result stored before is intact; the run that could not be stored is trained again)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HarnessError(f"cannot write to the results folder {root} while {doing} ({exc.strerror}); choose a folder you can write with results=DIR")
    return HarnessError(f"could not {doing} in the results folder {root}: {exc.strerror or exc}")


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


CLOCK_FILE = ".clock"  # in runs/: rewritten before each scan, its mtime is the folder's own "now" (see KnownFile)
BATCH = 2000  # records read, written or ingested at a time: bounds memory, keeps each database lock short


class FileState(NamedTuple):
    """What `stat` says about a result file: a change of its content changes at least one of these."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileState:
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


class KnownFile(NamedTuple):
    """A result file as it was when its record was read (and stored): its state, the folder's
    clock reading taken just before, the record's digest and status."""

    state: FileState
    checked_ns: int
    digest: str
    status: str

    def vouches_for(self, state: FileState) -> bool:
        """Whether the file still holds the record that was read: the same size, times and inode,
        and last changed before the clock reading that preceded the read. A file changed within
        that clock tick (after the read, say) could keep all of them equal, so it is read again
        (the "racily clean" case of git's index); so is one whose mtime was set into the future."""
        return state == self.state and max(state.mtime_ns, state.ctime_ns) < self.checked_ns


@dataclass(frozen=True)
class _Written:
    """A result file this store just wrote: enough to recognise it unchanged at the next sync."""

    record: dict[str, Any]
    digest: str
    inode: int
    size: int
    mtime_ns: int


@dataclass
class _Staged:
    """A result file of `write_many` between its temporary and its rename."""

    record: dict[str, Any]
    folder: Path
    moves: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary, final), in the order they are renamed
    info: Any = None  # the result file's stat, taken on the temporary
    new_folder: bool = False  # created by this write: nothing was there before it


def _flush_file_system(folder: Path) -> bool:
    """Write every dirty page of `folder`'s file system to disk (syncfs(2), Linux); False where
    that is not available, so the caller fsyncs file by file."""
    import ctypes

    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True


@dataclass
class SyncReport:
    ingested: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # what was skipped (a file's resolved path) -> why
    # a full sync: the status of every valid result file it listed, by run id (what `statuses()` would list again)
    statuses: dict[str, str] | None = None

    def done_ids(self) -> set[str]:
        """Of a full sync: the runs that need no training (as `ResultStore.done_ids`), without listing the folder again."""
        if self.statuses is None:
            raise ValueError("only a full sync (no records given) lists the statuses of the folder's runs")
        return {rid for rid, status in self.statuses.items() if status in DONE_STATUSES}

    @property
    def problems(self) -> list[str]:
        """One line per skipped file or record, each counted once however often it was met."""
        return list(self.skipped.values())

    def skip_file(self, path: Path, reason: str) -> None:
        self.skip(f"corrupt result file {path}", reason, key=str(path.resolve()))

    def skip(self, what: str, reason: str, *, key: str | None = None) -> None:
        self.skipped.setdefault(key or what, f"skipped {what}: {reason}")

    def merge(self, other: SyncReport) -> None:
        for key, problem in other.skipped.items():
            self.skipped.setdefault(key, problem)


class ResultStore:
    """One results folder: `runs/<run_id>/result.json` files and the derived database.

    `warn` receives what a reader should know but that stops nothing (default: printed to stderr
    as `warning: ...`), e.g. that an unreadable database was rebuilt from the result files."""

    def __init__(self, root: Path | str, *, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.db_path = self.root / DB_NAME
        self.warn = warn or _print_warning
        self.rebuilt_runs = 0  # runs ingested by rebuilds of the database (see connect)
        self._known: dict[str, KnownFile] | None = None  # result files vouched for at the last sync (see KnownFile)
        self._written: dict[str, _Written] = {}  # result files written since the last sync
        self._session: Any = None  # the connection `writing_session` keeps open, if one is

    # -- the folder ---------------------------------------------------------------------------
    def _check_folder(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise HarnessError(f"the results folder {self.root} is a file, not a folder; give a folder with results=DIR (or $HARNESS_RESULTS)")
        if self.runs_dir.exists() and not self.runs_dir.is_dir():
            raise HarnessError(
                f"{self.runs_dir} should be the folder of result files but is a file; move it away and run again "
                f"(`harness collect {self.db_path} results={self.root}` restores the result files from the database)"
            )

    def _make_folder(self, folder: Path) -> None:
        self._check_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"creating {folder}", self.root) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock over the folder's claims (and database repairs), across processes."""
        self._make_folder(self.runs_dir)
        try:
            fh = open(self.runs_dir / ".lock", "a+")
        except OSError as exc:
            raise _os_error(exc, "locking the results folder", self.root) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- result files (the source of truth) ---------------------------------------------------
    def write(self, record: dict[str, Any], *, predictions: bytes | None = None) -> Path:
        """Write a run's result file atomically; a concurrent reader sees the old file or the new.
        A failed write leaves no temporary file, and raises HarnessError saying why.

        `predictions`: the bytes of the run's predictions file (harness.predictions), checked
        against the record's summary and written beside the result file first, so a result file
        that names predictions is never seen without them. (A record in transit may carry them
        under `harness.predictions.PAYLOAD_KEY` instead.)"""
        (path,) = self.write_many([(record, predictions)])
        return path

    def write_many(self, items: Iterable[tuple[dict[str, Any], bytes | None]], *, checked: bool = False, texts: dict[str, bytes] | None = None) -> list[Path]:
        """Write several runs' result files (record, predictions bytes or None), each as `write`
        does: checked, atomically, durable before it is renamed into place. For more than one
        file the data reach the disk through one flush of the file system instead of one fsync
        per file (`harness collect` writes thousands). Returns the paths (a run given twice is
        written once, as given last); the records as written
        are what a following `sync(self.written_records())` ingests without reading them back.

        `checked=True`: the records already passed `validate_record` and hold no NaN or infinity
        (records read with `read_result` do, and predictions were checked with them), so they are
        not checked a second time: checking is most of the cost of writing thousands. `texts`
        (with `checked`): run id -> the bytes of a result file that parses to exactly that record
        (one read and validated, e.g. by `harness collect`), written as they are instead of
        encoding the record again."""
        if texts and not checked:
            raise ValueError("write_many(texts=...) takes only records already checked (checked=True)")
        texts = texts or {}
        pending: dict[str, tuple[dict[str, Any], bytes | None]] = {}  # a run given twice is written as given last
        for record, predictions in items:
            record = dict(record)
            payload = record.pop(PREDICTIONS_PAYLOAD, None)
            predictions = predictions if predictions is not None else payload
            if checked:
                pending[record["run_id"]] = (record, predictions)
                continue
            record = validate_record(json_safe(record))
            summary = record.get("predictions")
            if summary is not None and predictions is not None:
                try:
                    decode_predictions(predictions, summary)
                except BadPredictions as exc:
                    raise HarnessError(f"the predictions of run {record['run_id']} do not match its record: {exc}") from None
            pending[record["run_id"]] = (record, predictions)
        fsync_each = len(pending) <= 1
        staged: list[_Staged] = []
        try:
            if pending:
                self._make_folder(self.runs_dir)
            for record, predictions in pending.values():
                item = _Staged(record, self.runs_dir / record["run_id"])
                try:
                    os.mkdir(item.folder)
                    item.new_folder = True
                except FileExistsError as exc:
                    if not item.folder.is_dir():
                        raise _os_error(exc, f"creating {item.folder}", self.root) from None
                except OSError as exc:
                    raise _os_error(exc, f"creating {item.folder}", self.root) from None
                staged.append(item)
                beside = item.folder / PREDICTIONS_FILE
                if record.get("predictions") is not None and predictions is not None:
                    item.moves.append((self._write_temporary(beside, predictions, fsync=fsync_each)[0], beside))
                elif record.get("predictions") is None and not item.new_folder and beside.exists():
                    _unlink_quietly(beside)  # left by an earlier result of this run that had predictions
                text = texts.get(record["run_id"]) or result_text(record).encode("utf-8")
                tmp, item.info = self._write_temporary(item.folder / "result.json", text, fsync=fsync_each)
                item.moves.append((tmp, item.folder / "result.json"))
            if not fsync_each:
                self._flush(staged)
            paths = []
            for item in staged:
                while item.moves:  # the predictions first: a result file naming them is never seen without them
                    tmp, final = item.moves[0]
                    try:
                        os.replace(tmp, final)
                    except OSError as exc:
                        raise _os_error(exc, f"writing {final}", self.root) from None
                    item.moves.pop(0)
                info, rid = item.info, item.record["run_id"]
                self._written[rid] = _Written(item.record, record_digest(item.record), info.st_ino, info.st_size, info.st_mtime_ns)
                paths.append(item.folder / "result.json")
                if item.new_folder:
                    continue  # no temporary of an earlier write can be in a folder this write made
                own = item.folder / f".result.json.{_HOST}.{os.getpid()}.tmp"
                for entry in os.scandir(item.folder):  # temporaries left by a write that was killed or failed
                    if entry.name.startswith(".") and entry.name.endswith(".tmp") and _leftover_temporary(item.folder / entry.name, own):
                        _unlink_quietly(item.folder / entry.name)
        except BaseException:
            for item in staged:
                for tmp, _ in item.moves:
                    _unlink_quietly(tmp)
            raise
        return paths

    def _write_temporary(self, final: Path, data: bytes, *, fsync: bool) -> tuple[Path, os.stat_result]:
        """Write `data` to `final`'s temporary `.NAME.HOST.PID.tmp` (fsynced if asked): its path
        and stat. A failed write removes it and raises HarnessError saying why."""
        tmp = final.with_name(f".{final.name}.{_HOST}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
                info = os.fstat(fh.fileno())
        except BaseException as exc:
            _unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise _os_error(exc, f"writing {final}", self.root) from None
            raise
        return tmp, info

    def _flush(self, staged: list[_Staged]) -> None:
        """Make a batch of temporaries durable before any is renamed: one flush of the file system,
        or an fsync per file where that is not available."""
        try:
            if _flush_file_system(self.runs_dir):
                return
            for item in staged:
                for tmp, _ in item.moves:
                    _fsync_path(tmp)
        except OSError as exc:
            raise _os_error(exc, f"writing {len(staged)} result files", self.root) from None

    def written_records(self) -> list[dict[str, Any]]:
        """The records this store wrote since its last sync, as written (see `write_many`)."""
        return [w.record for w in self._written.values()]

    def read_predictions(self, record: dict[str, Any]) -> dict[str, Any]:
        """The checked predictions of a stored run (harness.predictions.decode); BadPredictions if
        its file is missing, too large or does not match the record."""
        path = self.runs_dir / record["run_id"] / PREDICTIONS_FILE
        try:
            data = read_regular_file(path, MAX_PREDICTIONS_BYTES)
        except CorruptResult as exc:
            raise BadPredictions(str(exc)) from None
        return decode_predictions(data, record["predictions"])

    def result_paths(self) -> list[Path]:
        return [Path(path) for _, path, _ in self._listing()]

    def _listing(self) -> list[tuple[str, str, FileState | None]]:
        """Every `runs/*/result.json` in sorted order: its folder's name, its path and its state
        (None where it is not a regular file or cannot be stat'ed: it is read, and the reason
        reported). Paths are strings: tens of thousands of pathlib objects cost more than the stats."""
        self._check_folder()
        runs = os.fspath(self.runs_dir)
        try:
            names = sorted(entry.name for entry in os.scandir(runs))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise _os_error(exc, f"listing {self.runs_dir}", self.root) from None
        out = []
        for name in names:
            path = f"{runs}{os.sep}{name}{os.sep}result.json"
            try:
                info = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # runs/.lock, a folder without a result yet, a link to nothing
            except OSError:
                out.append((name, path, None))
                continue
            out.append((name, path, FileState(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino) if stat.S_ISREG(info.st_mode) else None))
        return out

    def scan_report(self) -> tuple[dict[str, dict[str, Any]], SyncReport]:
        """Every valid result record by run id, and the corrupt files skipped (reads every file)."""
        records: dict[str, dict[str, Any]] = {}
        report = SyncReport()
        for path in self.result_paths():
            try:
                record = read_result(path, expected_id=path.parent.name)
            except CorruptResult as exc:
                report.skip_file(path, str(exc))
                continue
            records[record["run_id"]] = record
        return records, report

    def scan(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Every valid result record by run id, and a line per corrupt file."""
        records, report = self.scan_report()
        return records, report.problems

    def statuses(self) -> dict[str, str]:
        """The status of every run with a valid result file, by run id. A file the database (or
        this store's last sync) vouches for is not read again (see KnownFile); any other is read
        and checked as `scan` does."""
        known = self._known if self._known is not None else self._load_known_quietly()
        out = {}
        for name, path, state in self._listing():
            held = known.get(name)
            if held is not None and state is not None and held.vouches_for(state):
                out[name] = held.status
                continue
            try:
                record = read_result(Path(path), expected_id=name)
            except CorruptResult:
                continue
            out[name] = record["status"]
        return out

    def done_ids(self) -> set[str]:
        """Runs that need no training: a valid result file with status ok or diverged."""
        return {rid for rid, status in self.statuses().items() if status in DONE_STATUSES}

    # -- what the database knows of the files -------------------------------------------------
    def _clock(self) -> int:
        """The results folder's time as its file system keeps it (ns): the mtime of `runs/.clock`,
        rewritten now. 0 where it cannot be written, so that no file state is trusted."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.runs_dir / CLOCK_FILE, flags, 0o644)
        except OSError:
            return 0
        try:
            os.write(fd, b"\n")
            info = os.fstat(fd)
        except OSError:
            return 0
        finally:
            os.close(fd)
        return info.st_mtime_ns if stat.S_ISREG(info.st_mode) else 0

    def _load_known(self, con: Any) -> dict[str, KnownFile]:
        """The file states the database vouches for: only where the runs row holds what the file held."""
        rows = con.execute(
            "SELECT f.run_id, f.size, f.mtime_ns, f.ctime_ns, f.inode, f.checked_ns, f.record_digest, r.status "
            "FROM result_files f JOIN runs r ON r.run_id = f.run_id AND r.record_digest = f.record_digest"
        ).fetchall()
        return {row[0]: KnownFile(FileState(*row[1:5]), *row[5:]) for row in rows}

    def _load_known_quietly(self) -> dict[str, KnownFile]:
        """`_load_known` from a read-only look at the database; nothing (so every file is read)
        where there is none, another process holds it, or it is not one harness wrote."""
        import duckdb

        if not self.db_path.is_file():
            return {}
        try:
            con = duckdb.connect(str(self.db_path), read_only=True, config=SAFE_DUCKDB_CONFIG)
        except duckdb.Error:
            return {}
        try:
            return {} if _code_objects(con) else self._load_known(con)
        except duckdb.Error:  # a database from before file states were stored
            return {}
        finally:
            con.close()

    # -- claims: which process is training a run right now -----------------------------------
    def _claim_path(self, run_id: str) -> Path:
        return self.runs_dir / run_id / ".claim"

    def claim(self, run_id: str, *, worker_pid: int | None = None, update: bool = False) -> bool:
        """Claim a run for this process; False if another live process holds it.

        A claim left by a process that died (same host, pid gone or reused, e.g. after `kill -9`),
        or one from another host older than a day, is stale and taken over. Checking and taking
        happen under an exclusive lock of the folder, so of many processes that find the same
        stale claim exactly one wins. `update=True` rewrites this process's own claim (to note
        the worker pid)."""
        path = self._claim_path(run_id)
        self._make_folder(path.parent)
        body = {"pid": os.getpid(), "host": _HOST, "worker_pid": worker_pid, "since": time.time(), "started": _process_start(os.getpid())}
        with self._locked():
            owner = _read_claim(path)
            mine = owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == _HOST
            if update:
                if not mine:
                    return False
                body["since"] = owner.get("since", body["since"])
            elif owner is not None and not mine and not _claim_is_stale(owner):
                return False
            try:
                _write_atomically(path, json.dumps(body))
            except OSError as exc:
                raise _os_error(exc, f"claiming run {run_id}", self.root) from None
        return True

    def release(self, run_id: str) -> None:
        path = self._claim_path(run_id)
        if not path.parent.is_dir():
            return
        with self._locked():
            owner = _read_claim(path)
            if owner and owner.get("pid") == os.getpid() and owner.get("host") == _HOST:
                _unlink_quietly(path)

    def claim_holder(self, run_id: str) -> ClaimHolder | None:
        """The live process of another command (or host) holding the run's claim, if any."""
        owner = _read_claim(self._claim_path(run_id))
        if not owner or _claim_is_stale(owner) or (owner.get("pid") == os.getpid() and owner.get("host") == _HOST):
            return None
        worker = owner.get("worker_pid")
        return ClaimHolder(int(owner["pid"]), str(owner["host"]), float(owner.get("since") or 0), worker if isinstance(worker, int) else None)

    def claim_file(self, run_id: str) -> Path:
        """Where a run's claim lies: deleting it hands the run to the next command that asks."""
        return self._claim_path(run_id)

    def is_claimed_by_other(self, run_id: str) -> bool:
        return self.claim_holder(run_id) is not None

    def has_result(self, run_id: str) -> bool:
        return (self.runs_dir / run_id / "result.json").exists()

    def result_mtime(self, run_id: str) -> float:
        """When the run's result file was last written (0 if there is none)."""
        try:
            return (self.runs_dir / run_id / "result.json").stat().st_mtime
        except OSError:
            return 0.0

    # -- the database (derived) ---------------------------------------------------------------
    def connect(self, *, read_only: bool = False, wait_s: float = 30.0) -> Any:
        """Open the database (safely: see SAFE_DUCKDB_CONFIG), creating the schema; wait for
        another writer to finish. A missing database is built from the result files; one that
        DuckDB cannot read, or that holds views or macros (which harness never writes), is moved
        aside and rebuilt from them, with a warning. A file that is not a DuckDB database at all
        is left alone, with an error."""
        import duckdb

        self._check_folder()
        if read_only and not self.db_path.exists():
            if not self.result_paths():
                raise HarnessError(f"no results database at {self.db_path}; run `harness run suite=...` first, or `harness collect` to build it from result files")
            self._rebuild(f"there was no results database at {self.db_path}")
        if not read_only:
            self._make_folder(self.root)
        deadline = time.monotonic() + wait_s
        delay = 0.05
        repaired = False
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=read_only, config=SAFE_DUCKDB_CONFIG)
            except duckdb.Error as exc:
                if _is_lock_conflict(exc):
                    if time.monotonic() < deadline:
                        time.sleep(delay)
                        delay = min(delay * 2, 1.0)
                        continue
                    raise HarnessError(f"the results database {self.db_path} stayed locked by another process for {wait_s:g} s; wait for it (another `harness run` or `collect`?) and try again") from None
                if repaired or "permission denied" in str(exc).lower() or not self._looks_like_duckdb():
                    raise HarnessError(_db_error(self.db_path, exc)) from None
            else:
                code = _code_objects(con)
                if not code:
                    break
                con.close()
                if repaired:
                    raise HarnessError(f"the results database {self.db_path} still holds {code} after it was rebuilt; move it away and run `harness collect {self.root}`")
            repaired = True
            problem, aside = self._set_aside_bad_database()
            if problem is not None:
                self._rebuild(f"the results database {self.db_path} {problem}; moved it to {aside}")
        if not read_only:
            try:
                con.execute(_DDL)
                # databases made before a column existed gain it (the result files hold the values)
                con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS baseline VARCHAR")
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            except duckdb.Error as exc:
                con.close()
                raise HarnessError(_db_error(self.db_path, exc)) from None
        return con

    def _looks_like_duckdb(self) -> bool:
        """DuckDB's magic bytes (or an empty file: a database whose creation was cut short)."""
        try:
            with open(self.db_path, "rb") as fh:
                head = fh.read(12)
        except OSError:
            return False
        return head == b"" or head[8:12] == b"DUCK"

    def _problem(self) -> str | None:
        """What is wrong with the database file; None if nothing (or another process holds it)."""
        import duckdb

        try:
            con = duckdb.connect(str(self.db_path), read_only=True, config=SAFE_DUCKDB_CONFIG)
        except duckdb.Error as exc:
            if _is_lock_conflict(exc) or not self.db_path.exists():
                return None
            return f"could not be read ({_first_line(exc)})"
        try:
            code = _code_objects(con)
        finally:
            con.close()
        return f"holds {code}, which harness never writes" if code else None

    def _set_aside_bad_database(self) -> tuple[str | None, Path | None]:
        """Move a bad database file to `harness.duckdb.unreadable-TIME-PID` (kept, never deleted):
        (what was wrong, where it went). (None, None) when another process repaired it meanwhile."""
        with self._locked():  # of two processes that find it bad, one moves it
            problem = self._problem()
            if problem is None:
                return None, None
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            aside = self.db_path.with_name(f"{DB_NAME}.unreadable-{stamp}-{os.getpid()}")
            try:
                os.replace(self.db_path, aside)
                wal = self.db_path.with_name(DB_NAME + ".wal")
                if wal.exists():
                    os.replace(wal, aside.with_name(aside.name + ".wal"))
            except OSError as err:
                raise _os_error(err, f"moving the unreadable database {self.db_path} aside", self.root) from None
        return problem, aside

    def _rebuild(self, why: str) -> None:
        """Build the database from the result files, saying why and what was skipped."""
        report = self.sync()
        self.rebuilt_runs += report.ingested
        self.warn(f"{why}; built it again from the {report.ingested} valid result file(s) in {self.runs_dir}")
        for problem in report.problems:
            self.warn(problem)

    @contextmanager
    def writing_session(self) -> Iterator[None]:
        """Keep one write connection open for the block: the syncs inside it use it instead of
        opening the database each time (`harness collect` syncs thousands of records a batch at a
        time). Other processes wait for the database until the block ends, as for any writer."""
        if self._session is not None:
            yield
            return
        self._session = self.connect()
        try:
            yield
        finally:
            con, self._session = self._session, None
            con.close()

    def sync(self, records: Iterable[dict[str, Any]] | None = None) -> SyncReport:
        """Ingest result records (default: the valid files under runs/) the database lacks or holds older.

        Without `records`, a file is read only if it is new or changed since it was last read:
        the database keeps each ingested file's state (size, mtime, ctime, inode; see KnownFile),
        so a sync of an unchanged folder stats its files and reads none. A file that is corrupt,
        deleted or changed is handled as by a full scan: a corrupt one is reported each time and
        its run keeps the row of its last valid version; a deleted one's row stays (the database
        is where `harness collect` restores lost files from) but its run no longer counts as done.

        A record the database refuses is skipped with its file's path and the reason; the others
        are stored (one bad record never blocks the rest)."""
        import duckdb

        if records is not None:
            return self._sync_records(list(records))
        report = SyncReport()
        clock = self._clock()  # before any file is stat'ed: a change after it is always seen
        listing = self._listing()
        rebuilt_before = self.rebuilt_runs
        own = self._session is None
        con = self.connect() if own else self._session  # may rebuild the database from the files first
        try:
            report.ingested += self.rebuilt_runs - rebuilt_before
            try:
                known = self._load_known(con)
                listed = {name for name, _, _ in listing}
                gone = [rid for rid in known if rid not in listed]
                if gone:  # their runs rows stay; the states described files that are no more
                    con.execute("DELETE FROM result_files WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [gone])
                    for rid in gone:
                        del known[rid]
            except duckdb.Error as exc:
                raise HarnessError(_db_error(self.db_path, exc)) from None
            statuses: dict[str, str] = {}
            unread = []
            for name, path, state in listing:
                held = known.get(name)
                if state is not None and held is not None and held.vouches_for(state):
                    statuses[name] = held.status
                else:
                    unread.append((name, path, state))
            for start in range(0, len(unread), BATCH):  # read, check and ingest a batch at a time: memory stays bounded
                records, states = [], {}
                for name, path, state in unread[start : start + BATCH]:
                    try:
                        record = read_result(Path(path), expected_id=name)
                    except CorruptResult as exc:
                        report.skip_file(Path(path), str(exc))
                        continue
                    records.append(record)
                    statuses[name] = record["status"]
                    if state is not None:
                        states[name] = state
                if records:
                    report.ingested += self._store(records, states, clock, report, known, con=con)
        finally:
            if own:
                con.close()
        self._known = known
        report.statuses = statuses
        return report

    def _sync_records(self, records: list[dict[str, Any]]) -> SyncReport:
        """Ingest the given records; one this store has just written (and that its file still
        holds) has its file's state stored with it, so the next sync need not read it back."""
        report = SyncReport()
        clock = self._clock() if self._written else 0
        states, digests = {}, {}
        for r in records:
            written = self._written.pop(r["run_id"], None)
            if written is None:
                continue
            digest = written.digest if r is written.record else record_digest(r)
            digests[r["run_id"]] = digest
            try:
                info = os.stat(self.runs_dir / r["run_id"] / "result.json")
            except OSError:
                continue
            if digest == written.digest and (info.st_ino, info.st_size, info.st_mtime_ns) == (written.inode, written.size, written.mtime_ns):
                states[r["run_id"]] = FileState.of(info)  # the file is still the one written (a rename changes only its ctime)
        rebuilt_before = self.rebuilt_runs
        report.ingested = self._store(records, states, clock, report, self._known, digests=digests)
        report.ingested += self.rebuilt_runs - rebuilt_before
        return report

    def _store(
        self, records: list[dict[str, Any]], states: dict[str, FileState], clock: int, report: SyncReport, known: dict[str, KnownFile] | None,
        *, digests: dict[str, str] | None = None, con: Any = None,
    ) -> int:
        """Ingest the records the database lacks or holds older, and store the file states given
        for the records it now holds (with `clock`, the reading taken before they were stat'ed).
        Updates `known`; returns the number ingested."""
        import duckdb

        digests = {**{r["run_id"]: record_digest(r) for r in records if r["run_id"] not in (digests or {})}, **(digests or {})}
        own = con is None and self._session is None
        con = self.connect() if own else (con if con is not None else self._session)
        try:
            ids = [r["run_id"] for r in records]
            held = dict(con.execute("SELECT run_id, record_digest FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall())
            fresh = [r for r in records if held.get(r["run_id"]) != digests[r["run_id"]]]
            with _digests_known(fresh, digests):
                ingested = self._ingest(con, fresh, report, held=held.keys()) if fresh else set()
            stored = [r for r in records if r["run_id"] in ingested or held.get(r["run_id"]) == digests[r["run_id"]]]
            rows = [(r["run_id"], states[r["run_id"]], digests[r["run_id"]], r["status"]) for r in stored if r["run_id"] in states]
            if rows and clock:
                _insert_states(con, [(rid, state, clock, digest) for rid, state, digest, _ in rows])
        except duckdb.Error as exc:
            raise HarnessError(_db_error(self.db_path, exc)) from None
        finally:
            if own:
                con.close()
        if known is not None and clock:
            for rid, state, digest, status in rows:
                known[rid] = KnownFile(state, clock, digest, status)
        return len(ingested)

    def _ingest(self, con: Any, records: list[dict[str, Any]], report: SyncReport, *, held: Collection[str] | None = None) -> set[str]:
        """Insert (or replace) these records' rows; the run ids stored. `held`: the run ids the
        database has rows of (None: any may); only their old rows need deleting."""
        import duckdb

        def insert(batch: list[dict[str, Any]]) -> None:
            replaced = [r["run_id"] for r in batch if held is None or r["run_id"] in held]
            con.execute("BEGIN TRANSACTION")
            try:
                _insert(con, batch, replaced)
                _insert_predictions(con, batch, predictions, replaced)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        predictions = {}
        for r in records:
            if r.get("predictions") is not None:
                try:
                    predictions[r["run_id"]] = self.read_predictions(r)
                except BadPredictions as exc:
                    path = self.runs_dir / r["run_id"] / PREDICTIONS_FILE
                    report.skip(f"predictions file {path}", f"{exc}; the run is stored without its predictions", key=str(path.resolve()))

        batches = [records] if len(records) == 1 else [records, *([r] for r in records)]
        ingested: set[str] = set()
        for batch in batches:  # all at once; if that fails, one by one to find the record(s) it failed on
            try:
                insert(batch)
            except duckdb.Error as exc:
                if _is_environmental(exc):
                    raise HarnessError(_db_error(self.db_path, exc)) from None
                if len(batch) == 1:
                    report.skip_file(self.runs_dir / batch[0]["run_id"] / "result.json", f"the database refused it ({_first_line(exc)})")
                continue
            ingested.update(r["run_id"] for r in batch)
            if batch is records:
                break
        return ingested


def _code_objects(con: Any) -> str:
    """The views and macros a database holds ("" if none). harness writes tables only, so any is
    a sign of a database from elsewhere. Read through the built-in catalog functions, named
    with their `system` catalog so that a macro of the database cannot stand in for them."""
    views = [v for (v,) in con.execute("SELECT view_name FROM system.main.duckdb_views() WHERE NOT internal").fetchall()]
    macros = [f for (f,) in con.execute("SELECT DISTINCT function_name FROM system.main.duckdb_functions() WHERE NOT internal").fetchall()]
    parts = [f"{what} {', '.join(sorted(names)[:5])}" for what, names in (("view(s)", views), ("macro(s)", macros)) if names]
    return "; ".join(parts)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "conflicting lock" in text or "could not set lock" in text


def _is_environmental(exc: Exception) -> bool:
    """A database error that says nothing about the record (disk full, I/O, out of memory)."""
    import duckdb

    return isinstance(exc, (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.FatalException, duckdb.InternalException))


def _clean_number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _insert_predictions(con: Any, records: list[dict[str, Any]], predictions: dict[str, dict[str, Any]], replaced: list[str] | None = None) -> None:
    """Replace these runs' per-sample predictions; `predictions`: run id -> its checked predictions
    (harness.predictions.decode); a run without an entry has none stored."""
    import pandas as pd

    from harness.predictions import empty_rows, table_rows

    replaced = [r["run_id"] for r in records] if replaced is None else replaced
    for table in ("predictions", "prediction_summaries") if replaced else ():
        con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [replaced])
    held = [r for r in records if r["run_id"] in predictions and r.get("predictions") is not None]
    if not held:
        return
    summaries = pd.DataFrame({"run_id": [r["run_id"] for r in held], "summary": [json.dumps(r["predictions"], sort_keys=True) for r in held]})
    rows = [table_rows(r["run_id"], predictions[r["run_id"]]) for r in held]
    per_sample = pd.concat(rows, ignore_index=True) if rows else empty_rows()
    con.register("new_summaries", summaries)
    con.register("new_predictions", per_sample)
    try:
        con.execute("INSERT INTO prediction_summaries SELECT run_id, summary FROM new_summaries")
        con.execute("INSERT INTO predictions SELECT run_id, split, idx, label, pred, confidence, nll, brier FROM new_predictions")
    finally:
        con.unregister("new_summaries")
        con.unregister("new_predictions")


def _insert_states(con: Any, rows: list[tuple[str, FileState, int, str]]) -> None:
    """Store (run id, its file's state, the clock reading before the stat, the record's digest)."""
    import pandas as pd

    frame = pd.DataFrame(
        [(rid, s.size, s.mtime_ns, s.ctime_ns, s.inode, checked, digest) for rid, s, checked, digest in rows],
        columns=["run_id", "size", "mtime_ns", "ctime_ns", "inode", "checked_ns", "record_digest"],
    )
    con.register("new_states", frame)
    try:
        con.execute("INSERT OR REPLACE INTO result_files SELECT run_id, size, mtime_ns, ctime_ns, CAST(inode AS UBIGINT), checked_ns, record_digest FROM new_states")
    finally:
        con.unregister("new_states")


_RUN_COLUMNS = (  # the runs table's columns in order (a database made before `baseline` existed gained it last)
    "run_id, suite, suite_version, scale, variant, entry, CAST(seed AS INTEGER), dataset, model, recipe_id, primary_metric, "
    "primary_higher_is_better, status, error, CAST(started_at AS TIMESTAMP), CAST(finished_at AS TIMESTAMP), duration_s, spec, "
    "provenance, info, record_digest, baseline"
)


def _timestamp_value(text: Any) -> str | None:
    """A record's time (checked to be ISO 8601 without a zone) as the text DuckDB casts to a TIMESTAMP."""
    return dt.datetime.fromisoformat(timestamp_text(text)).isoformat(sep=" ") if text else None


def _insert(con: Any, records: list[dict[str, Any]], replaced: list[str] | None = None) -> None:
    """Insert these records' rows, first deleting the old rows of the run ids `replaced` (default: all of them)."""
    import pandas as pd

    replaced = [r["run_id"] for r in records] if replaced is None else replaced
    for table in ("metrics", "series", "runs") if replaced else ():
        con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [replaced])
    names = [derived_names(r) for r in records]  # the spec decides the row, not what the record says
    specs = [r["spec"] for r in records]
    runs = pd.DataFrame({  # column by column, the times as text that the INSERT casts: a dict and two Timestamps per row cost more
        "run_id": [r["run_id"] for r in records],
        "suite": [sp["suite"] for sp in specs],
        "suite_version": [sp["suite_version"] for sp in specs],
        "scale": [sp["scale"] for sp in specs],
        "variant": [variant for _, variant in names],
        "entry": [entry for entry, _ in names],
        "seed": [int(sp["seed"]) for sp in specs],
        "dataset": [sp["recipe"].get("dataset") for sp in specs],
        "model": [sp["recipe"].get("model") for sp in specs],
        "recipe_id": [recipe_id(sp["recipe"]) for sp in specs],
        "primary_metric": [r["primary_metric"] for r in records],
        "primary_higher_is_better": [bool(r.get("primary_higher_is_better", True)) for r in records],
        "status": [r["status"] for r in records],
        "error": [r.get("error") for r in records],
        "started_at": [_timestamp_value(r.get("started_at")) for r in records],
        "finished_at": [_timestamp_value(r.get("finished_at")) for r in records],
        "duration_s": [_clean_number(r.get("duration_s")) for r in records],
        "spec": [json.dumps(sp, sort_keys=True) for sp in specs],
        "provenance": [json.dumps(r["provenance"], sort_keys=True) for r in records],
        "info": [json.dumps(r.get("info", {}), sort_keys=True) for r in records],
        "record_digest": [record_digest(r) for r in records],
        "baseline": [r.get("baseline") for r in records],
    })
    runs["primary_higher_is_better"] = runs["primary_higher_is_better"].astype(bool)
    runs["seed"] = runs["seed"].astype("int64")
    runs["duration_s"] = runs["duration_s"].astype("float64")
    metrics = pd.DataFrame(
        [(r["run_id"], name, _clean_number(m["value"]), bool(m["higher_is_better"]), i) for r in records for i, (name, m) in enumerate(r["metrics"].items())],
        columns=["run_id", "name", "value", "higher_is_better", "position"],
    )
    lengths = [(r["run_id"], name, len(values)) for r in records for name, values in r["series"].items()]
    series = pd.DataFrame({  # column by column: a tuple per value would cost more than the values (a series may hold millions)
        "run_id": [rid for rid, _, n in lengths for _ in range(n)],
        "name": [name for _, name, n in lengths for _ in range(n)],
        "idx": [i for _, _, n in lengths for i in range(n)],
        "value": [_clean_number(v) for r in records for values in r["series"].values() for v in values],
    }, columns=["run_id", "name", "idx", "value"])
    con.register("new_runs", runs)
    con.register("new_metrics", metrics)
    con.register("new_series", series)
    try:
        con.execute(f"INSERT INTO runs SELECT {_RUN_COLUMNS} FROM new_runs")
        con.execute("INSERT INTO metrics SELECT run_id, name, value, higher_is_better, CAST(position AS INTEGER) FROM new_metrics")
        con.execute("INSERT INTO series SELECT run_id, name, CAST(idx AS INTEGER), value FROM new_series")
    finally:
        for view in ("new_runs", "new_metrics", "new_series"):
            con.unregister(view)


_ENCODE = json.JSONEncoder(sort_keys=True, allow_nan=False, separators=(", ", ": ")).encode


def result_text(record: dict[str, Any]) -> str:
    """A result file's JSON: one line per field and per entry of an object field (a metric, a
    series, a spec field), each value on one line. Readable, and written by the C encoder: an
    indented dump goes through json's pure-Python encoder, the dearest step of writing thousands."""
    fields = []
    for key in sorted(record):
        value = record[key]
        if isinstance(value, dict) and value:
            inner = ",\n".join(f"  {_ENCODE(k)}: {_ENCODE(value[k])}" for k in sorted(value))
            fields.append(f" {_ENCODE(key)}: {{\n{inner}\n }}")
        else:
            fields.append(f" {_ENCODE(key)}: {_ENCODE(value)}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


_DIGESTS_KNOWN: dict[int, tuple[dict[str, Any], str]] = {}  # id(record) -> (record, digest) while an ingest runs


@contextmanager
def _digests_known(records: list[dict[str, Any]], digests: dict[str, str]) -> Iterator[None]:
    """Let `record_digest` answer for these records from `digests` (computed once per sync)."""
    _DIGESTS_KNOWN.update({id(r): (r, digests[r["run_id"]]) for r in records if r["run_id"] in digests})
    try:
        yield
    finally:
        for r in records:
            _DIGESTS_KNOWN.pop(id(r), None)


def record_digest(record: dict[str, Any]) -> str:
    known = _DIGESTS_KNOWN.get(id(record))
    if known is not None and known[0] is record:
        return known[1]
    import hashlib

    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def recipe_id(recipe: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def _db_error(path: Path, exc: Exception) -> str:
    text = str(exc).lower()
    if "no space left" in text or "disk quota" in text:
        return (
            f"no space left on the device of {path.parent} while updating the results database; free some space and run the same "
            f"command again (the result files are intact; `harness collect {path.parent}` brings the database up to date)"
        )
    if "permission denied" in text or "read-only file system" in text:
        return f"cannot open the results database {path} ({_first_line(exc)}); choose a results folder you can write with results=DIR"
    return (
        f"cannot open the results database {path}: {_first_line(exc)}. If the file is not a harness DuckDB database, move it "
        f"away; the database can be rebuilt from the result files with `harness collect {path.parent}`."
    )
