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
        (lambda text, r: json.dumps({**r, "status": "great"}), "unknown status"),
        (lambda text, r: json.dumps({**r, "spec": {**r["spec"], "seed": 7}}), "does not match the hash"),
        (lambda text, r: json.dumps({**r, "metrics": {"top1": {"value": "0.9", "higher_is_better": True}}}), "non-numeric"),
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
