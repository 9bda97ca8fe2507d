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
