"""The README's promises on bad input and failure, as one table: input -> message -> nothing lost.

Every row prepares one bad input next to a results folder holding two good runs, runs one
`harness` command, and checks its exit code, that its output says what was wrong (and what would
be right), that no traceback is printed, and that the two stored runs are untouched: the same
result-file bytes, and the database (rebuilt if need be) still ranks them.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from harness import records as records_module
from harness import store as store_module
from harness.spec import RunSpec
from harness.store import ResultStore
from harness.testing import fake_record, run_cli

SECRET = "TOPSECRET-d41d8cd9"
GOOD = [fake_record(seed=0, value=0.6), fake_record(seed=0, entry="focal", value=0.7)]


@dataclass
class Env:
    results: Path  # the results folder with the two good runs
    tmp: Path  # room for sources and bad files
    monkeypatch: pytest.MonkeyPatch
    changed_run: str = ""

    @property
    def db(self) -> Path:
        return self.results / "harness.duckdb"

    def secret_file(self) -> Path:
        path = self.tmp / "secret.txt"
        path.write_text(SECRET)
        return path


def forged(record: dict, **changes) -> dict:
    """A copy of `record` with fields changed (`spec__seed` changes spec.seed), its run id recomputed
    where the spec still hashes, so that only the changed field is wrong."""
    record = json.loads(json.dumps(record))
    for key, value in changes.items():
        if key.startswith("spec__"):
            record["spec"][key.removeprefix("spec__")] = value
        else:
            record[key] = value
    try:
        record["run_id"] = RunSpec.from_canonical(record["spec"]).run_id
    except Exception:
        pass
    return record


def put(folder: Path, record: dict, *, text: str | None = None) -> Path:
    path = folder / "runs" / str(record["run_id"]) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else json.dumps(record))
    return path


MALFORMED = {
    "started_at": (dict(started_at="garbage"), 'started_at is "garbage"; expected an ISO 8601 UTC time'),
    "finished_at": (dict(finished_at=12345), "finished_at is 12345; expected an ISO 8601 UTC time"),
    "duration": (dict(duration_s="abc"), 'duration_s is "abc"; expected a finite number >= 0 or null'),
    "seed": (dict(spec__seed=1e30), "spec.seed is 1e+30; expected an integer in [0, 2147483647]"),
    "seed_overflow": (dict(spec__seed=2**40), "spec.seed is 1099511627776; expected an integer in [0, 2147483647]"),
    "recipe": (dict(spec__recipe=["mnist5k"]), 'spec.recipe is ["mnist5k"]; expected an object'),
    "metric": (dict(metrics={"top1": {"value": True, "higher_is_better": True}}), "metrics.top1.value is true; expected a finite number"),
    "infinity": (None, "unreadable JSON (Infinity is not a number JSON allows)"),
}


def malformed_file(folder: Path, name: str) -> tuple[Path, str]:
    changes, reason = MALFORMED[name]
    if changes is None:  # a literal JSON cannot hold
        record = fake_record(seed=9)
        return put(folder, record, text=json.dumps(record).replace('"duration_s": 1.0', '"duration_s": Infinity')), reason
    return put(folder, forged(fake_record(seed=9), **changes)), reason


# ---------------------------------------------------------------------------------------------
# the bad inputs (each returns the command's arguments, results= is added unless given)
# ---------------------------------------------------------------------------------------------


def misspelled_method(env: Env) -> list[str]:
    return ["run", "suite=long_tail", "method=focla"]


def misspelled_key(env: Env) -> list[str]:
    return ["run", "suite=long_tail", "ratoi=10"]


def uncached_hub_dataset_offline(env: Env) -> list[str]:
    return ["run", "suite=long_tail", "method=ce", "seeds=1", "dataset=cifar10"]


def run_into_a_file(env: Env) -> list[str]:
    (env.tmp / "notes.txt").write_text("my notes")
    return ["run", "suite=long_tail", "method=ce", "seeds=1", "epochs=1", f"results={env.tmp / 'notes.txt'}"]


def results_is_a_file(env: Env) -> list[str]:
    (env.tmp / "notes.txt").write_text("my notes")
    return ["leaderboard", f"results={env.tmp / 'notes.txt'}"]


def collect_into_a_file(env: Env) -> list[str]:
    (env.tmp / "notes.txt").write_text("my notes")
    return ["collect", str(env.results), f"results={env.tmp / 'notes.txt'}"]


def runs_folder_is_a_file(env: Env) -> list[str]:
    other = env.tmp / "other"
    other.mkdir()
    (other / "runs").write_text("not a folder")
    return ["collect", str(env.results), f"results={other}"]


def unwritable_results_folder(env: Env) -> list[str]:
    target = env.tmp / "locked"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(target)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    env.monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    return ["collect", str(env.results), f"results={target}"]


def truncated_database(env: Env) -> list[str]:
    os.truncate(env.db, 5000)
    return ["leaderboard", "format=json"]


def truncated_database_written_to(env: Env) -> list[str]:
    os.truncate(env.db, 5000)
    put(env.tmp / "src", fake_record(seed=5))
    return ["collect", str(env.tmp / "src")]


def database_replaced_by_notes(env: Env) -> list[str]:
    env.db.write_text("these are my notes, not a database")
    return ["leaderboard"]


def database_with_a_view_reading_a_file(env: Env) -> list[str]:
    secret = env.secret_file()
    env.db.unlink()
    con = duckdb.connect(str(env.db))
    con.execute(f"CREATE VIEW runs AS SELECT content AS suite FROM read_text('{secret}')")
    con.execute(f"CREATE MACRO avg(x) AS (SELECT content FROM read_text('{secret}'))")
    con.close()
    return ["leaderboard", "format=json"]


def malformed_file_in_runs(name: str) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        malformed_file(env.results, name)
        env.db.unlink()  # the leaderboard rebuilds the database from runs/
        return ["leaderboard", "format=json"]

    return setup


def malformed_file_collected(name: str) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        malformed_file(env.tmp / "src", name)
        put(env.tmp / "src", fake_record(seed=5))
        return ["collect", str(env.tmp / "src")]

    return setup


def foreign_database_with_views_and_a_macro(env: Env) -> list[str]:
    secret, path = env.secret_file(), env.tmp / "evil.duckdb"
    con = duckdb.connect(str(path))
    con.execute(f"CREATE VIEW runs AS SELECT content AS run_id FROM read_text('{secret}')")
    con.execute(f"CREATE VIEW metrics AS SELECT content AS run_id FROM read_text('{secret}')")
    con.execute("CREATE TABLE series (run_id VARCHAR, name VARCHAR, idx INTEGER, value DOUBLE)")
    con.execute(f"CREATE MACRO strftime(a, b) AS (SELECT content FROM read_text('{secret}'))")
    con.close()
    return ["collect", str(path)]


def harness_database_carrying_macros(env: Env) -> list[str]:
    """A genuine harness database, plus macros named like the functions a reader might call and a
    view that reads a local file: its rows are collected, none of its code runs."""
    secret = env.secret_file()
    source = ResultStore(env.tmp / "theirs")
    source.write(fake_record(seed=4))
    source.write(fake_record(seed=5))
    source.sync()
    con = duckdb.connect(str(source.db_path))
    for name, args in (("strftime", "a, b"), ("unnest", "a"), ("json", "a")):
        con.execute(f"CREATE MACRO {name}({args}) AS (SELECT content FROM read_text('{secret}'))")
    con.execute(f"CREATE VIEW leak AS SELECT content FROM read_text('{secret}')")
    con.close()
    return ["collect", str(source.db_path)]


def record_choosing_its_own_row(env: Env) -> list[str]:
    """A record that names another entry, primary metric and baseline than its spec and the
    installed suite card say."""
    from harness.catalog import load_catalog

    version = load_catalog().suites.get("long_tail").version
    record = {**fake_record(seed=6, version=version, extra={"ece": 0.9}), "entry": "winner", "primary_metric": "ece", "baseline": "winner"}
    put(env.tmp / "src", record)
    env.changed_run = record["run_id"]
    return ["collect", str(env.tmp / "src")]


def fifo_in_a_source_folder(env: Env) -> list[str]:
    path = env.tmp / "src" / "runs" / "0123456789abcdef" / "result.json"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    return ["collect", str(env.tmp / "src")]


def fifo_named_directly(env: Env) -> list[str]:
    os.mkfifo(env.tmp / "pipe.json")
    return ["collect", str(env.tmp / "pipe.json")]


def link_to_dev_zero(env: Env) -> list[str]:
    path = env.tmp / "src" / "runs" / "0123456789abcdef" / "result.json"
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/zero")
    return ["collect", str(env.tmp / "src")]


def oversized_result_file(env: Env) -> list[str]:
    env.monkeypatch.setattr(records_module, "MAX_RESULT_BYTES", 1000)
    put(env.tmp / "src", fake_record(seed=5), text=json.dumps({**fake_record(seed=5), "info": {"pad": "x" * 2000}}))
    return ["collect", str(env.tmp / "src")]


def single_file_outside_its_run_folder(env: Env) -> list[str]:
    (env.tmp / "mail").mkdir()
    (env.tmp / "mail" / "result.json").write_text(json.dumps(fake_record(seed=7)))
    return ["collect", str(env.tmp / "mail" / "result.json")]


def disk_full_while_copying(env: Env) -> list[str]:
    put(env.tmp / "src", fake_record(seed=5))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    env.monkeypatch.setattr(store_module.os, "fsync", full)
    return ["collect", str(env.tmp / "src")]


def record_with_null_duration(env: Env) -> list[str]:
    record = {**fake_record(seed=3), "duration_s": None, "finished_at": None}
    ResultStore(env.results).write(record)
    return ["show", record["run_id"][:10]]


def collect_of_own_folder_with_a_corrupt_file(env: Env) -> list[str]:
    put(env.results, fake_record(seed=8), text="{truncated")
    return ["collect", str(env.results)]


def leaderboard_with_an_unknown_key(env: Env) -> list[str]:
    return ["leaderboard", "colour=red"]


def leaderboard_filtered_by_a_suite_axis(env: Env) -> list[str]:
    store = ResultStore(env.results)
    for setting in ("episodic", "continual"):
        store.write(fake_record(suite="ood", variant={"setting": setting, "rounds": 1}, value=0.25))
    store.sync()
    return ["leaderboard", "suite=ood", "setting=episodic", "format=json"]


def metric_that_overflows(env: Env) -> list[str]:
    store = ResultStore(env.results)
    for seed in range(3):
        store.write(fake_record(entry="huge", seed=seed, value=1.7e308))
    store.sync()
    return ["leaderboard", "format=json"]


# ---------------------------------------------------------------------------------------------
# what each must say (and do)
# ---------------------------------------------------------------------------------------------


def no_secret(env: Env, out: str) -> None:
    assert SECRET not in out
    for path in env.results.rglob("*"):
        if path.is_file() and not path.name.startswith("harness.duckdb"):
            assert SECRET not in path.read_text(errors="replace"), path


def json_board(runs: int) -> Callable[[Env, str], None]:
    def check(env: Env, out: str) -> None:
        rows = json.loads(out[out.index("[") :])
        assert sum(r["n"] for r in rows) == runs

    return check


def moved_aside(env: Env, out: str) -> None:
    assert list(env.results.glob("harness.duckdb.unreadable-*")), "the unreadable database is kept"


def left_alone(env: Env, out: str) -> None:
    assert env.db.read_text() == "these are my notes, not a database"
    env.db.rename(env.tmp / "notes.txt")  # the way out the message names: then the database is rebuilt


def not_copied(env: Env, out: str) -> None:
    assert len(list(env.results.glob("runs/*/result.json"))) == 3  # the two good ones and the valid newcomer


def nothing_half_written(env: Env, out: str) -> None:
    assert not list(env.results.rglob("*.tmp"))


def one_line_per_file(env: Env, out: str) -> None:
    assert out.count("skipped corrupt result file") == 1 and "(0 result file(s) copied, 1 skipped)" in out


def only_the_episodic_board(env: Env, out: str) -> None:
    rows = json.loads(out)
    assert {r["variant"] for r in rows} == {"rounds=1,setting=episodic"}


def stored_as_the_card_says(env: Env, out: str) -> None:
    con = ResultStore(env.results).connect(read_only=True)
    try:
        row = con.execute("SELECT entry, primary_metric, baseline FROM runs WHERE run_id = ?", [env.changed_run]).fetchall()
    finally:
        con.close()
    assert row == [("ce", "top1", "ce")]


def finite_json(env: Env, out: str) -> None:
    rows = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))
    huge = next(r for r in rows if r["method"] == "huge")
    assert huge["mean"] is None and huge["n"] == 3


@dataclass
class Row:
    setup: Callable[[Env], list[str]]
    code: int
    says: tuple[str, ...]
    check: Callable[[Env, str], None] | None = None
    # run in a child process with a time and memory limit: a regression here would block forever
    # (a FIFO) or read without end (/dev/zero) instead of failing
    isolated: bool = False


TABLE = {
    # the command
    "misspelled method": Row(misspelled_method, 2, ("unknown method 'focla'", "did you mean 'focal'")),
    "misspelled key": Row(misspelled_key, 2, ("unknown key 'ratoi'", "did you mean ratio")),
    "uncached hub dataset offline": Row(uncached_hub_dataset_offline, 2, ("cifar10", "dataset=mnist5k")),
    "unknown leaderboard key": Row(leaderboard_with_an_unknown_key, 2, ("does not take colour", "ratio (long_tail)")),
    # the results folder
    "run into a file": Row(run_into_a_file, 2, ("is a file, not a folder", "results=DIR")),
    "results= a file": Row(results_is_a_file, 2, ("is a file, not a folder", "results=DIR")),
    "collect into a file": Row(collect_into_a_file, 2, ("is a file, not a folder",)),
    "runs/ replaced by a file": Row(runs_folder_is_a_file, 2, ("should be the folder of result files but is a file", "harness collect")),
    "unwritable results folder": Row(unwritable_results_folder, 2, ("cannot write to the results folder", "Permission denied", "results=DIR")),
    "disk full": Row(disk_full_while_copying, 2, ("no space left on the device", "run the same command again"), nothing_half_written),
    # the database
    "truncated database": Row(truncated_database, 0, ("could not be read", "moved it to", "built it again from the 2 valid result file(s)"), moved_aside),
    "truncated database, written to": Row(truncated_database_written_to, 0, ("could not be read", "moved it to", "3 run(s) ingested"), moved_aside),
    "database replaced by a user's file": Row(database_replaced_by_notes, 2, ("cannot open the results database", "harness collect"), left_alone),
    "database with a view and macro": Row(database_with_a_view_reading_a_file, 0, ("holds view(s) runs; macro(s) avg", "moved it to"), no_secret),
    # result files
    **{f"malformed {name}, database rebuilt": Row(malformed_file_in_runs(name), 0, ("skipped corrupt result file", MALFORMED[name][1]), json_board(2)) for name in MALFORMED},
    **{f"malformed {name}, collected": Row(malformed_file_collected(name), 0, ("skipped corrupt result file", "src/runs/", MALFORMED[name][1], "1 skipped"), not_copied) for name in MALFORMED},
    "corrupt file counted once": Row(collect_of_own_folder_with_a_corrupt_file, 0, ("unreadable JSON",), one_line_per_file),
    "FIFO in a folder": Row(fifo_in_a_source_folder, 0, ("not a regular file", "1 skipped"), isolated=True),
    "FIFO named": Row(fifo_named_directly, 2, ("is not a regular file or folder",), isolated=True),
    "link to /dev/zero": Row(link_to_dev_zero, 0, ("not a regular file", "1 skipped"), isolated=True),
    "oversized result file": Row(oversized_result_file, 0, ("over the limit of 1000 bytes",)),
    "one result file, anywhere": Row(single_file_outside_its_run_folder, 0, ("1 run(s) ingested", "1 result file(s) copied, 0 skipped")),
    "null duration shown": Row(record_with_null_duration, 0, ("status: ok", "(-, finished -)")),
    # databases from elsewhere
    "foreign database of views": Row(foreign_database_with_views_and_a_macro, 2, ("not a harness results database", "runs, metrics", "views, which are never run"), no_secret),
    "harness database carrying macros": Row(harness_database_carrying_macros, 0, ("2 run(s) ingested",), no_secret),
    "record choosing its own row": Row(record_choosing_its_own_row, 0, ("1 run(s) ingested", "differs from its spec's", "'winner' -> 'ce'", "stored as the card's"), stored_as_the_card_says),
    # the leaderboard
    "leaderboard by a suite's axis": Row(leaderboard_filtered_by_a_suite_axis, 0, ('"variant": "rounds=1,setting=episodic"',), only_the_episodic_board),
    "metric that overflows": Row(metric_that_overflows, 0, ('"mean": null',), finite_json),
}


@pytest.fixture
def env(tmp_path):
    results = tmp_path / "results"
    store = ResultStore(results)
    for record in GOOD:
        store.write(record)
    store.sync()
    (tmp_path / "work").mkdir()
    with pytest.MonkeyPatch.context() as patch:  # undone before the test checks that nothing was lost
        yield Env(results, tmp_path / "work", patch)


def run_isolated(*args: str) -> tuple[int, str, str]:
    """`harness ARGS` in a child process that may use 2 GiB of data and 2 minutes at most."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))

    try:
        done = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=120, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`harness {' '.join(args)}` blocked")
    return done.returncode, done.stdout, done.stderr


def snapshot(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in results.glob("runs/*/result.json")}


@pytest.mark.parametrize("name", list(TABLE))
def test_bad_input_is_named_and_loses_nothing(env, name):
    row = TABLE[name]
    before = snapshot(env.results)
    args = row.setup(env)
    if not any(a.startswith("results=") for a in args):
        args.append(f"results={env.results}")
    code, out, err = (run_isolated if row.isolated else run_cli)(*args)
    text = out + err
    assert code == row.code, text
    assert "Traceback" not in text
    for fragment in row.says:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    if row.check is not None:
        row.check(env, out if row.code == 0 and "format=json" in args else text)
    env.monkeypatch.undo()  # what the row patched (mkdir, fsync, a limit) must not hide a loss
    after = snapshot(env.results)
    assert {k: v for k, v in after.items() if k in before} == before, "a stored result file changed"
    con = ResultStore(env.results).connect(read_only=True)
    try:
        ids = {r for (r,) in con.execute("SELECT run_id FROM runs").fetchall()}
    finally:
        con.close()
    assert {r["run_id"] for r in GOOD} <= ids, "a stored run left the database"
