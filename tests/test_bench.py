"""`harness bench` runs its measurements through the real code paths (so an API change breaks a test,
not the benchmark); the timings themselves are never asserted."""

from __future__ import annotations

from harness.bench import render_rows, run_benchmarks


def test_the_engine_and_pipeline_benchmarks_run_and_report_a_ratio():
    seen = []
    rows = run_benchmarks(["engine", "pipeline"], repeats=1, progress=seen.append)
    assert seen == ["bench engine ...", "bench pipeline ..."]
    assert [r.name for r in rows] == ["engine", "pipeline"]
    assert all(r.harness_s > 0 and r.reference_s and r.reference_s > 0 for r in rows)
    table = render_rows(rows, "markdown")
    assert "| engine" in table and "ratio <= 1.05" in table


def test_the_store_benchmarks_run_whole_commands_and_report_peak_memory():
    rows = run_benchmarks(["store"], repeats=1, progress=lambda _: None, store_runs=20)
    assert [r.name for r in rows] == ["store"] * 3
    collect_row, start_row, publish_row = rows
    assert "collect of 20 result files" in collect_row.what and collect_row.reference_s > 0
    assert "folder of 20 runs" in start_row.what and start_row.reference_s > 0
    assert "publish of 21 runs" in publish_row.what and "largest page" in publish_row.what
    assert all(r.harness_s > 0 and r.peak_mb > 50 for r in rows)  # a Python process with the harness loaded
    assert publish_row.met  # a page stays under 1 MB although one run stores a 10^6-point series
    table = render_rows(rows, "markdown")
    assert "peak MB" in table and "< 5 s, < 300 MB" in table
