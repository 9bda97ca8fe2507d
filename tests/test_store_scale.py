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
