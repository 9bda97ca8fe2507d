"""The store at scale: collect works a batch at a time, and what it writes is what it read."""

from __future__ import annotations

import pytest

import harness.collect as collect_module
from harness.collect import collect
from harness.errors import HarnessError
from harness.store import ResultStore, read_result
from harness.testing import fake_record


def _source(root, n):
    store = ResultStore(root)
    records = [fake_record(seed=i, value=i / 100, extra={"ece": 0.01 * (i % 7)}) for i in range(n)]
    store.write_many([(r, None) for r in records])
    return records


def test_collect_holds_one_batch_of_records_at_a_time(tmp_path, monkeypatch):
    records = _source(tmp_path / "src", 11)
    monkeypatch.setattr(collect_module, "BATCH", 3)
    written, synced = [], []
    write_many, sync = ResultStore.write_many, ResultStore.sync

    def counting_write(self, items, **kw):
        items = list(items)
        written.append(len(items))
        return write_many(self, items, **kw)

    def counting_sync(self, records=None):
        if records is not None:
            records = list(records)
            synced.append(len(records))
        return sync(self, records)

    monkeypatch.setattr(ResultStore, "write_many", counting_write)
    monkeypatch.setattr(ResultStore, "sync", counting_sync)
    report = collect([tmp_path / "src"], tmp_path / "target")
    assert report.copied == report.ingested == 11 and report.problems == []
    assert written == [3, 3, 3, 2] and synced == [3, 3, 3, 2]  # never more than a batch held
    for r in records:  # what was written is the record read, field for field
        assert read_result(tmp_path / "target" / "runs" / r["run_id"] / "result.json") == r


def test_a_store_given_unchecked_records_still_refuses_a_bad_one(tmp_path):
    bad = fake_record(seed=0)
    bad["run_id"] = "0" * 16
    with pytest.raises(Exception, match="run id"):
        ResultStore(tmp_path).write_many([(fake_record(seed=1), None), (bad, None)])
    assert ResultStore(tmp_path).result_paths() == []  # nothing of the batch is written


def test_a_second_collect_of_an_unchanged_folder_reads_no_result_file(tmp_path, monkeypatch):
    _source(tmp_path / "src", 5)
    collect([tmp_path / "src"], tmp_path / "target")
    reads = []
    import harness.store as store_module

    original = store_module.read_result

    def counting(path, **kw):
        reads.append(path)
        return original(path, **kw)

    monkeypatch.setattr(store_module, "read_result", counting)
    again = collect([tmp_path / "src"], tmp_path / "target")  # the source is read; the target's files are not
    assert again.copied == 0 and reads == []
    store = ResultStore(tmp_path / "target")
    assert len(store.done_ids()) == 5 and reads == []


def test_collect_of_a_missing_source_says_what_to_give(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        collect([tmp_path / "nowhere"], tmp_path / "target")


def test_collect_copies_an_unchanged_result_file_byte_for_byte_and_rewrites_a_normalised_one(tmp_path):
    from harness.catalog import load_catalog

    card = load_catalog().suites.get("long_tail")
    same = fake_record(seed=0, version=str(card.version), variant={"ratio": 100, "test_dist": "uniform"})
    same["baseline"] = card.baseline
    lying = fake_record(seed=1, version=str(card.version), variant={"ratio": 100, "test_dist": "uniform"})
    lying["baseline"] = "not_the_baseline"
    src = ResultStore(tmp_path / "src")
    src.write_many([(same, None), (lying, None)])
    text = (tmp_path / "src" / "runs" / same["run_id"] / "result.json").read_bytes()
    hand_formatted = b"\n".join(line.strip() for line in text.splitlines())  # valid JSON, another layout
    (tmp_path / "src" / "runs" / same["run_id"] / "result.json").write_bytes(hand_formatted)

    report = collect([tmp_path / "src"], tmp_path / "target", suites=[card])
    assert report.copied == report.ingested == 2
    copied = tmp_path / "target" / "runs" / same["run_id"] / "result.json"
    assert copied.read_bytes() == hand_formatted  # stored as read: nothing in it changed
    fixed = read_result(tmp_path / "target" / "runs" / lying["run_id"] / "result.json")
    assert fixed["baseline"] == card.baseline  # the card decides; the file was written anew
    con = ResultStore(tmp_path / "target").connect(read_only=True)
    try:
        digests = dict(con.execute("SELECT run_id, record_digest FROM runs").fetchall())
    finally:
        con.close()
    from harness.store import record_digest

    assert digests[same["run_id"]] == record_digest(read_result(copied))


def test_a_full_sync_lists_the_runs_that_are_done(tmp_path):
    store = ResultStore(tmp_path)
    store.write_many([(fake_record(seed=0), None), (fake_record(seed=1, status="failed"), None), (fake_record(seed=2), None)])
    (tmp_path / "runs" / fake_record(seed=2)["run_id"] / "result.json").write_text("{")  # corrupt: not done
    report = store.sync()
    assert report.done_ids() == store.done_ids() == {fake_record(seed=0)["run_id"]}
    assert report.statuses == store.statuses()
    again = store.sync()  # the files are now vouched for by the database: the same answer without reading them
    assert again.done_ids() == report.done_ids() and again.statuses == report.statuses
    with pytest.raises(ValueError, match="full sync"):
        store.sync([fake_record(seed=3)]).done_ids()


def test_a_series_value_that_is_not_a_finite_number_is_refused_with_its_place(tmp_path):
    from harness.records import CorruptResult, validate_record

    for value in (float("nan"), float("inf"), True, "0.5", 10**400):
        record = fake_record(seed=0)
        record["series"]["curve"] = [0.1, None, 3, value]
        with pytest.raises(CorruptResult, match=r"series\.curve\[3\] is "):
            validate_record(record)
    record = fake_record(seed=0)
    record["series"]["curve"] = [0.1, None, 3, -2.5e300]
    assert validate_record(record) is record
