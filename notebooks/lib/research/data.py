"""Data access by date range from ``DATA_PATH`` (default ``/data``), in polars.

Layout (the same paths hold real WRDS extracts on a real deployment):
``wrds/crsp/daily/{YYYY}.parquet``, ``wrds/crsp/{dsenames,dsedelist,dsi,ccmxpf_lnkhist}.parquet``,
``wrds/comp/{fundq,funda}.parquet``, ``wrds/ff/factors_{daily,monthly}.parquet``,
``analytics/backtests/<run>/``, ``MANIFEST.json``.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import polars as pl

COMPUSTAT_STD = (
    (pl.col("indfmt") == "INDL") & (pl.col("datafmt") == "STD") & (pl.col("popsrc") == "D") & (pl.col("consol") == "C")
)


def permno_date_key(schema: pl.Schema | None = None) -> pl.Expr | list[str]:
    """What to sort a CRSP panel by for (permno, date) order: one int64 key when ``date`` is a ``pl.Date``
    (permno in the high 32 bits, days since 1970 in the low; about 2x faster to sort), else both columns."""
    if schema is not None and schema.get("date") != pl.Date:
        return ["permno", "date"]
    return pl.col("permno").cast(pl.Int64) * 2**32 + pl.col("date").cast(pl.Int32).cast(pl.Int64)


def data_root(root: Path | str | None = None) -> Path:
    return Path(root) if root is not None else Path(os.environ.get("DATA_PATH", "/data"))


def manifest(root: Path | str | None = None) -> dict:
    return json.loads((data_root(root) / "MANIFEST.json").read_text())


def read_crsp_daily(start: date, end: date, root: Path | str | None = None) -> pl.LazyFrame:
    """CRSP daily rows with ``start <= date <= end``, read lazily from the per-year files."""
    base = data_root(root) / "wrds" / "crsp" / "daily"
    files = [base / f"{year}.parquet" for year in range(start.year, end.year + 1)]
    files = [f for f in files if f.exists()]
    if not files:
        raise FileNotFoundError(f"no CRSP daily files for {start.year}-{end.year} under {base}")
    return pl.scan_parquet(files).filter(pl.col("date").is_between(start, end))


def read_table(name: str, root: Path | str | None = None) -> pl.DataFrame:
    """One of: dsenames, dsedelist, dsi, ccmxpf_lnkhist (CRSP); fundq, funda (Compustat, standard rows only)."""
    base = data_root(root) / "wrds"
    if name in {"dsenames", "dsedelist", "dsi", "ccmxpf_lnkhist"}:
        return pl.read_parquet(base / "crsp" / f"{name}.parquet")
    if name in {"fundq", "funda"}:
        return pl.read_parquet(base / "comp" / f"{name}.parquet").filter(COMPUSTAT_STD)
    raise ValueError(f"unknown table {name!r}")


def read_ff(frequency: str = "daily", root: Path | str | None = None) -> pl.DataFrame:
    """Fama-French factors in decimals (as on WRDS): date, mktrf, smb, hml, umd, rf."""
    return pl.read_parquet(data_root(root) / "wrds" / "ff" / f"factors_{frequency}.parquet")
