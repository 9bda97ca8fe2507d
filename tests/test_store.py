"""Result files and the derived DuckDB database: atomic writes, validation, sync, collect."""

from __future__ import annotations

import json

import duckdb
import pytest

from harness.collect import collect
from harness.errors import HarnessError
from harness.store import CorruptResult, ResultStore, read_result
from harness.testing import fake_record


def count(store: ResultStore, table: str = "runs") -> int:
    con = store.connect(read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    finally:
        con.close()


def test_write_is_atomic_and_round_trips(tmp_path):
    store = ResultStore(tmp_path)
    record = fake_record(value=0.75)
    path = store.write(record)
    assert path == tmp_path / "runs" / record["run_id"] / "result.json"
    assert read_result(path) == record
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary left behind


def test_nan_metrics_are_stored_as_null(tmp_path):
    store = ResultStore(tmp_path)
    record = fake_record(extra={"few_shot": float("nan")})
    store.write(record)
    assert json.loads((tmp_path / "runs" / record["run_id"] / "result.json").read_text())["metrics"]["few_shot"]["value"] is None
    store.sync()
    con = store.connect(read_only=True)
    assert con.execute("SELECT value FROM metrics WHERE name = 'few_shot'").fetchall() == [(None,)]
    con.close()


def test_sync_ingests_once_and_keeps_typed_numbers(tmp_path):
    store = ResultStore(tmp_path)
    for seed in range(3):
        store.write(fake_record(seed=seed, value=0.5 + seed / 10))
    assert store.sync().ingested == 3
    assert store.sync().ingested == 0
    con = store.connect(read_only=True)
    (dtype,) = con.execute("SELECT typeof(value) FROM metrics LIMIT 1").fetchall()[0]
    assert dtype == "DOUBLE"
    assert con.execute("SELECT sum(value) FROM metrics").fetchall()[0][0] == pytest.approx(0.5 + 0.6 + 0.7)
    assert con.execute("SELECT count(*) FROM series").fetchall()[0][0] == 6
    con.close()


def test_a_retried_run_replaces_its_row(tmp_path):
    store = ResultStore(tmp_path)
    failed = fake_record(status="failed")
    store.write(failed)
    store.sync()
    ok = fake_record(value=0.9)
    assert ok["run_id"] == failed["run_id"]
    store.write(ok)
    assert store.sync().ingested == 1
    con = store.connect(read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("ok",)]
    assert con.execute("SELECT count(*) FROM metrics").fetchall()[0][0] == 1
    con.close()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda text, r: text[: len(text) // 2], "unreadable JSON"),
        (lambda text, r: json.dumps({**r, "schema": 99}), "schema 99"),
        (lambda text, r: json.dumps({**r, "status": "great"}), 'status is "great"; expected one of ok, failed'),
        (lambda text, r: json.dumps({**r, "spec": {**r["spec"], "seed": 7}}), "does not match the hash"),
        (lambda text, r: json.dumps({**r, "metrics": {"top1": {"value": "0.9", "higher_is_better": True}}}), 'metrics.top1.value is "0.9"; expected a finite number'),
        (lambda text, r: json.dumps({k: v for k, v in r.items() if k != "metrics"}), "missing field 'metrics'"),
    ],
)
def test_corrupt_result_files_are_detected_and_never_ingested(tmp_path, mutate, reason):
    store = ResultStore(tmp_path)
    good, bad = fake_record(seed=0), fake_record(seed=1)
    store.write(good)
    path = store.write(bad)
    path.write_text(mutate(path.read_text(), bad))
    with pytest.raises(CorruptResult, match=reason):
        read_result(path)
    report = store.sync()
    assert report.ingested == 1 and len(report.problems) == 1 and reason in report.problems[0]
    assert count(store) == 1
    assert store.done_ids() == {good["run_id"]}


def test_a_file_that_is_not_duckdb_gives_a_clear_error_and_is_left_alone(tmp_path):
    store = ResultStore(tmp_path)
    store.db_path.write_text("these are my notes, not a database")
    with pytest.raises(HarnessError, match="cannot open the results database") as info:
        store.connect()
    assert "harness collect" in str(info.value)
    assert store.db_path.read_text() == "these are my notes, not a database"


def test_the_database_can_be_rebuilt_from_result_files(tmp_path):
    store = ResultStore(tmp_path)
    for seed in range(2):
        store.write(fake_record(seed=seed))
    store.sync()
    store.db_path.unlink()
    assert store.sync().ingested == 2 and count(store) == 2


def test_collect_merges_folders_and_databases_without_duplicates(tmp_path):
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    shared = fake_record(seed=0)
    a.write(shared)
    a.write(fake_record(seed=1))
    b.write(shared)
    b.write(fake_record(seed=2, entry="focal"))
    b.sync()
    (tmp_path / "b" / "runs").rename(tmp_path / "b-runs-moved")  # b is now known only by its database
    target = tmp_path / "merged"
    report = collect([tmp_path / "a", tmp_path / "b" / "harness.duckdb"], target)
    assert report.problems == []
    merged = ResultStore(target)
    assert count(merged) == 3 and len(merged.result_paths()) == 3
    again = collect([tmp_path / "a"], target)
    assert again.copied == 0 and count(merged) == 3
    # a record rebuilt from a database validates like the original file
    rebuilt = read_result(target / "runs" / shared["run_id"] / "result.json")
    assert rebuilt["metrics"] == shared["metrics"] and rebuilt["spec"] == shared["spec"]


def test_collect_rejects_a_database_of_another_program(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(HarnessError, match="not a harness results database"):
        collect([path], tmp_path / "merged")


# ---------------------------------------------------------------------------------------------
# failed writes, refused records, records that try to choose their own row
# ---------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_no_temporary_and_a_later_write_removes_old_ones(tmp_path, monkeypatch):
    import errno
    import os
    import subprocess
    import sys

    store = ResultStore(tmp_path)
    record = fake_record()
    run_dir = tmp_path / "runs" / record["run_id"]
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / f".result.json.{dead.pid}.tmp").write_text("{half")  # a writer killed mid-write, before hosts were named

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(HarnessError, match="no space left on the device"):
        store.write(record)
    monkeypatch.undo()
    assert sorted(p.name for p in run_dir.iterdir()) == [f".result.json.{dead.pid}.tmp"]  # ours is gone, the old one still there
    store.write(record)
    assert [p.name for p in run_dir.iterdir()] == ["result.json"]  # the rerun cleans up after the killed writer
    assert read_result(run_dir / "result.json") == record


def test_a_record_the_database_refuses_is_skipped_with_its_path_and_the_others_are_stored(tmp_path, monkeypatch):
    from harness import store as store_module

    store = ResultStore(tmp_path)
    records = [fake_record(seed=s) for s in range(3)]
    for r in records:
        store.write(r)
    refused = records[1]["run_id"]
    real_insert = store_module._insert

    def picky_insert(con, batch, *rest):
        if any(r["run_id"] == refused for r in batch):
            raise duckdb.ConversionException("Conversion Error: a value the schema did not foresee")
        real_insert(con, batch, *rest)

    monkeypatch.setattr(store_module, "_insert", picky_insert)
    report = store.sync()
    assert report.ingested == 2
    (problem,) = report.problems
    assert str(tmp_path / "runs" / refused / "result.json") in problem and "the database refused it" in problem
    assert count(store) == 2


class Card:
    """A stand-in suite card: what collect reads from an installed suite."""

    def __init__(self, name="long_tail", version="1", primary="top1", baseline="ce", directions=None):
        from harness.suite import Metric

        self.name, self.version, self.primary, self.baseline = name, version, primary, baseline
        self.metrics = tuple(Metric(n, hib, "") for n, hib in (directions or {"top1": True, "ece": False}).items())

    def metric(self, name):
        return next(m for m in self.metrics if m.name == name)


def test_a_collected_record_cannot_choose_its_row_metric_or_baseline(tmp_path):
    source = ResultStore(tmp_path / "theirs")
    honest = fake_record(seed=0, value=0.9, extra={"ece": 0.01})
    liar = {**fake_record(seed=1, value=0.1, extra={"ece": 0.99}), "entry": "ce_winner", "variant": "ratio=1",
            "primary_metric": "ece", "primary_higher_is_better": True, "baseline": "zzz"}
    liar["metrics"]["ece"]["higher_is_better"] = True
    for r in (honest, liar):
        source.write(r)
    report = collect([tmp_path / "theirs"], tmp_path / "ours", suites=[Card()])
    assert report.copied == 2 and report.problems == []
    assert any("the entry named in the record differs from its spec's" in n and "'ce_winner' -> 'ce'" in n for n in report.notes)
    assert any("primary metric or baseline differs from suite long_tail v1's card" in n for n in report.notes)
    con = ResultStore(tmp_path / "ours").connect(read_only=True)
    rows = con.execute("SELECT entry, variant, primary_metric, primary_higher_is_better, baseline FROM runs").fetchall()
    directions = con.execute("SELECT DISTINCT higher_is_better FROM metrics WHERE name = 'ece'").fetchall()
    con.close()
    assert set(rows) == {("ce", "ratio=100", "top1", True, "ce")}
    assert directions == [(False,)]
    # a suite not installed at the record's version keeps the record's own, and the report says so
    report = collect([tmp_path / "theirs"], tmp_path / "elsewhere", suites=[Card(version="2")])
    assert any("suite long_tail v1 has no installed card (installed: v2)" in n for n in report.notes)
    con = ResultStore(tmp_path / "elsewhere").connect(read_only=True)
    assert ("ece",) in con.execute("SELECT primary_metric FROM runs").fetchall()
    assert con.execute("SELECT DISTINCT entry FROM runs").fetchall() == [("ce",)]  # the entry is the spec's regardless
    con.close()


def test_collect_runs_no_view_macro_or_computed_column_of_a_foreign_database(tmp_path):
    """A harness database whose base tables are genuine, carrying a view that reads a local file,
    macros named like functions a reader would call, and a computed column: the rows are read as
    data, and nothing it brings is run."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-7f3a")
    source = ResultStore(tmp_path / "theirs")
    source.write(fake_record(seed=0))
    source.sync()
    con = duckdb.connect(str(source.db_path))
    reads = f"(SELECT content FROM read_text('{secret}'))"
    con.execute(f"CREATE VIEW leak AS SELECT {reads} AS x")
    for name, args in (("strftime", "a, b"), ("unnest", "a"), ("duckdb_tables", ""), ("current_database", "")):
        con.execute(f"CREATE MACRO {name}({args}) AS {reads}")
    con.close()
    report = collect([source.db_path], tmp_path / "ours", suites=[Card()])
    assert report.copied == 1 and report.problems == []
    ours = (tmp_path / "ours" / "runs").rglob("result.json")
    assert all("SECRET" not in p.read_text() for p in ours)
    # a computed column would run an expression on read: such a table is refused, not read
    con = duckdb.connect(str(source.db_path))
    con.execute("ALTER TABLE series RENAME TO series_data")
    con.execute("CREATE TABLE series (run_id VARCHAR, name VARCHAR, idx INTEGER, value DOUBLE AS (length(run_id)))")
    con.close()
    with pytest.raises(HarnessError, match="computed"):
        collect([source.db_path], tmp_path / "ours2", suites=[Card()])


# ---------------------------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------------------------

CLAIMER = r"""
import json, os, sys, time
from harness.store import ResultStore
root, runs, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = ResultStore(root)
open(os.path.join(root, f"ready-{me}"), "w").close()
while not os.path.exists(os.path.join(root, "go")):
    time.sleep(0.001)
won = [i for i in range(runs) if store.claim(f"{i:016x}")]
with open(os.path.join(root, f"won-{me}.json"), "w") as fh:
    json.dump(won, fh)
while not os.path.exists(os.path.join(root, "done")):  # alive until all have tried: a winner's claim stays live
    time.sleep(0.01)
"""


def test_a_stale_claim_is_taken_over_by_exactly_one_of_many_processes(tmp_path):
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs, processes = 200, 6
    for i in range(runs):  # every run holds the claim of a process that was killed
        (tmp_path / "runs" / f"{i:016x}").mkdir(parents=True)
        (tmp_path / "runs" / f"{i:016x}" / ".claim").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": 0}))
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path), str(runs), str(k)]) for k in range(processes)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < processes and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "go").touch()
        while len(list(tmp_path.glob("won-*.json"))) < processes and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "done").touch()
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    wins = [i for k in range(processes) for i in json.loads((tmp_path / f"won-{k}.json").read_text())]
    assert sorted(wins) == list(range(runs))  # each run won once: never twice, never lost


def test_a_claim_whose_pid_was_reused_is_stale(tmp_path):
    import os

    store = ResultStore(tmp_path)
    (tmp_path / "runs" / "abc").mkdir(parents=True)
    # a live pid (our parent), but a start time that is not that process's: its owner died and the pid was reused
    (tmp_path / "runs" / "abc" / ".claim").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "since": 0, "started": 1}))
    assert store.claim_holder("abc") is None
    assert store.claim("abc")
    holder = json.loads((tmp_path / "runs" / "abc" / ".claim").read_text())
    assert holder["pid"] == os.getpid()
    store.release("abc")
    assert not (tmp_path / "runs" / "abc" / ".claim").exists()
