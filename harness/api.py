"""A Python API for notebooks: run a grid, read leaderboards, runs, curves and predictions as pandas DataFrames.

    import harness

    board = harness.run("long_tail", method=["ce", "focal"], seeds=2, epochs=2, results="my-results")
    runs = harness.runs(results="my-results")
    curve = harness.curves(runs.run_id[0], results="my-results")

Every function takes the keys of the command line as keyword arguments (a list sweeps a key, as a
comma does there) and the same results folder (`results=`, else `$HARNESS_RESULTS`, else
`./harness-results`); a mistake raises `harness.errors.HarnessError` with the message the command
line prints. The functions are also importable from `harness` itself (`harness.run`,
`harness.board`, `harness.runs`, `harness.curves`, `harness.sample_predictions`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set)):
        return ",".join(_text(v) for v in value)
    return str(value)


def _overrides(keys: dict[str, Any]) -> dict[str, str]:
    """Keyword arguments as the command line's KEY=VALUE pairs (`focal__gamma` may stand for `focal.gamma`)."""
    return {k.replace("__", "."): _text(v) for k, v in keys.items() if v is not None}


def _store(results: str | Path | None) -> Any:
    from harness.cli import _results_dir
    from harness.store import ResultStore

    return ResultStore(_results_dir({"results": str(results)} if results is not None else {}))


def run(suite: str, *, results: str | Path | None = None, progress: bool = False, **keys: Any) -> Any:
    """Train the grid `harness run suite=SUITE KEY=VALUE ...` describes (stored runs are not trained
    again) and return the leaderboard of what it ran, as `board` returns it. `progress=True` shows
    the progress line on stderr."""
    from harness.cli import execute_grid

    overrides = _overrides({"suite": suite, "results": results, **keys})
    grid = execute_grid(overrides, progress=progress)
    if grid.report.interrupted:
        raise KeyboardInterrupt
    variants = {s.variant_label for s in grid.specs}
    frame = board(suite=grid.suite.name, scale=grid.specs[0].scale, results=grid.store.root)
    return frame[frame["variant"].isin(variants)].reset_index(drop=True)


def board(*, suite: str | None = None, scale: str | None = None, variant: str | None = None, results: str | Path | None = None,
          test: str = "t", correction: str = "holm") -> Any:
    """The stored leaderboards as one DataFrame: one row per (board, entry), the columns of
    `harness leaderboard format=csv` (protocol, rank, method, n, the paired test against the
    baseline, the published number where one applies, seed disagreement, `<metric>_mean`/`_std`)."""
    from harness.catalog import load_catalog
    from harness.leaderboard import attach_reported, build_boards
    from harness.reported import collect_reported
    from harness.tables import leaderboard_frame

    store = _store(results)
    con = store.connect(read_only=True)
    try:
        boards = build_boards(con, suite=suite, scale=scale, variant=variant, test=test, correction=correction)
    finally:
        con.close()
    attach_reported(boards, collect_reported(load_catalog()))
    return leaderboard_frame(boards)


leaderboard = board  # `from harness import api; api.leaderboard(...)`


def runs(*, suite: str | None = None, results: str | Path | None = None) -> Any:
    """One row per stored run: run id, protocol, entry, seed, status, duration, and each metric as a column."""
    import pandas as pd

    store = _store(results)
    con = store.connect(read_only=True)
    try:
        where, params = ("WHERE suite = ?", [suite]) if suite else ("", [])
        frame = con.execute(
            "SELECT run_id, suite, suite_version, scale, variant, dataset, model, recipe_id, entry, seed, status, duration_s "
            f"FROM runs {where} ORDER BY suite, variant, entry, seed, run_id", params
        ).df()
        metrics = con.execute("SELECT run_id, name, value FROM metrics").df()
    finally:
        con.close()
    if not metrics.empty:
        wide = metrics.pivot(index="run_id", columns="name", values="value").reset_index()
        frame = frame.merge(wide, on="run_id", how="left")
    return pd.DataFrame(frame)


def _run_id(store: Any, run_id: str) -> str:
    matches = sorted({p.parent.name for p in store.result_paths() if p.parent.name.startswith(run_id)})
    if not matches:
        raise HarnessError(f"no stored run with id {run_id!r} in {store.root}")
    if len(matches) > 1:
        raise HarnessError(f"run id prefix {run_id!r} is ambiguous: {', '.join(matches[:5])}")
    return matches[0]


def curves(run_id: str, *, results: str | Path | None = None) -> Any:
    """A run's stored series in long form: `name`, `step` (1-based for per-epoch curves, else the
    index), `value`; a unique prefix of the run id is enough."""
    store = _store(results)
    rid = _run_id(store, run_id)
    con = store.connect(read_only=True)
    try:
        frame = con.execute("SELECT name, idx, value FROM series WHERE run_id = ? ORDER BY name, idx", [rid]).df()
        (spec,) = con.execute("SELECT spec FROM runs WHERE run_id = ?", [rid]).fetchone()
    finally:
        con.close()
    epochs = json.loads(spec).get("recipe", {}).get("epochs")
    lengths = frame.groupby("name")["idx"].transform("size") if not frame.empty else frame["idx"]
    per_epoch = frame["name"].str.endswith("_per_epoch") | (lengths == epochs)
    frame["step"] = frame["idx"] + per_epoch.astype(int)
    return frame[["name", "step", "value"]].reset_index(drop=True)


def sample_predictions(run_id: str, *, results: str | Path | None = None) -> Any:
    """A run's stored per-sample predictions (harness.predictions): split, idx, label, pred,
    confidence, nll, brier, and the probabilities when the run has K <= 100 classes."""
    import pandas as pd

    store = _store(results)
    rid = _run_id(store, run_id)
    records, _ = store.scan()
    record = records.get(rid)
    if record is None or record.get("predictions") is None:
        raise HarnessError(f"run {rid} stored no per-sample predictions")
    frames = []
    for split, cols in store.read_predictions(record).items():
        data = {"split": split, **{c: v for c, v in cols.items() if c != "probs"}}
        if cols["probs"] is not None:
            data["probs"] = list(cols["probs"].astype("float32"))
        frames.append(pd.DataFrame(data))
    return pd.concat(frames, ignore_index=True)
