"""Data access by date range from ``DATA_PATH`` (default ``/data``), in polars."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import polars as pl


def data_root() -> Path:
    return Path(os.environ.get("DATA_PATH", "/data"))


def read_crsp_daily(start: date, end: date, root: Path | None = None) -> pl.LazyFrame:
    """CRSP daily rows with ``start <= date <= end``, read lazily from the per-year files."""
    base = (root or data_root()) / "wrds" / "crsp" / "daily"
    files = [base / f"{year}.parquet" for year in range(start.year, end.year + 1)]
    files = [f for f in files if f.exists()]
    if not files:
        raise FileNotFoundError(f"no CRSP daily files for {start.year}-{end.year} under {base}")
    return pl.scan_parquet(files).filter(pl.col("date").is_between(start, end))
