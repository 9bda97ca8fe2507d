"""Stored results as data files: the database's tables and the leaderboards as Parquet (and CSV).

What `harness push` puts beside the run records (for a hub's dataset viewer and for anyone with
pandas), and what the published site offers for download under each board. The same records give
byte-identical files: rows in a fixed order, no timestamps of their own, no statistics pages.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

# the database's tables in the order they are written, each sorted by its key
TABLE_ORDER = {
    "runs": "run_id",
    "metrics": "run_id, position, name",
    "series": "run_id, name, idx",
    "predictions": "run_id, split, idx",
}


def parquet_bytes(table: Any) -> bytes:
    """An Arrow table as Parquet (zstd; deterministic for the same table and pyarrow version)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=False)
    return sink.getvalue().to_pybytes()


def leaderboard_frame(boards: list[Any]) -> Any:
    """One row per (board, entry), the columns of `harness leaderboard format=csv` (typed)."""
    import pandas as pd

    from harness.leaderboard import PROTOCOL_KEYS, render

    text = render(boards, "csv") if boards else ",".join(PROTOCOL_KEYS) + "\n"
    text_columns = (*PROTOCOL_KEYS, "method", "baseline", "test", "correction")
    return _empty_to_null(pd.read_csv(io.StringIO(text), dtype={k: str for k in text_columns}, keep_default_na=False), text_columns)


def _empty_to_null(frame: Any, text_columns: tuple[str, ...]) -> Any:
    """CSV writes a missing value as an empty field: back to null, then numbers where a column holds only numbers."""
    import pandas as pd

    for column in frame.columns:
        values = frame[column].astype(object).where(frame[column].astype(str) != "", None)
        if column not in text_columns:
            converted = pd.to_numeric(values, errors="coerce")
            if int(converted.notna().sum()) == int(values.notna().sum()):
                values = converted
        frame[column] = values
    return frame


def leaderboard_csv(boards: list[Any]) -> bytes:
    from harness.leaderboard import render

    return render(boards, "csv").encode("utf-8")


def memory_database(records: Iterable[dict[str, Any]], predictions: dict[str, dict[str, Any]] | None = None) -> Any:
    """An in-memory database holding these (checked) records and predictions, as `ResultStore.sync` stores them."""
    import duckdb

    from harness.store import _DDL, SAFE_DUCKDB_CONFIG, _insert, _insert_predictions

    records = sorted(records, key=lambda r: r["run_id"])
    con = duckdb.connect(":memory:", config=SAFE_DUCKDB_CONFIG)
    con.execute(_DDL)
    if records:
        _insert(con, records)
        _insert_predictions(con, records, predictions or {})
    return con


def arrow_table(con: Any, query: str) -> Any:
    relation = con.sql(query)
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def database_tables(con: Any) -> dict[str, bytes]:
    """The database's tables (runs, metrics, series, predictions) and the leaderboards, as Parquet files by name."""
    from harness.leaderboard import build_boards

    files = {f"{name}.parquet": parquet_bytes(arrow_table(con, f"SELECT * FROM {name} ORDER BY {order}")) for name, order in TABLE_ORDER.items()}
    files["leaderboard.parquet"] = parquet_bytes(leaderboard_frame(build_boards(con)))
    return files
