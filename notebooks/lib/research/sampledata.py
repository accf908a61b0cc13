"""Synthetic data in CRSP / Fama-French shapes, written in the layout of a real /data.

    python -m research.sampledata --preset ci --out /data

Deterministic for a seed. This is the small generator the launch loop needs; the full one
(fundamentals, links, splits, planted signal) is tracked by its own issue.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

VERSION = "0.1.0"
PRESETS = {"ci": {"stocks": 200, "years": 2}, "default": {"stocks": 3000, "years": 5}}


def generate(out: Path, *, stocks: int, years: int, seed: int = 7, end_year: int = 2024) -> dict:
    rng = np.random.default_rng(seed)
    start = date(end_year - years + 1, 1, 1)
    days = pl.date_range(start, date(end_year, 12, 31), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5)
    n_days = len(days)
    permnos = np.arange(10001, 10001 + stocks)
    exchcd = rng.choice([1, 2, 3], size=stocks, p=[0.25, 0.10, 0.65])
    beta = rng.normal(1.0, 0.3, stocks)
    idio = np.where(exchcd == 3, rng.uniform(0.025, 0.04, stocks), rng.uniform(0.012, 0.02, stocks))
    mkt = rng.standard_t(5, n_days) * 0.009 + 0.0004
    eps = rng.standard_t(4, (n_days, stocks)) * idio / np.sqrt(2.0)
    ret = mkt[:, None] * beta[None, :] + eps + 0.0002
    div = np.where(rng.random((n_days, stocks)) < 1 / 63, rng.uniform(0.002, 0.006, (n_days, stocks)), 0.0)
    retx = ret - div
    prc = 20.0 * np.exp(np.cumsum(np.log1p(retx), axis=0))
    no_trade = rng.random((n_days, stocks)) < 0.01
    vol = np.where(no_trade, 0, rng.lognormal(11, 1, (n_days, stocks)).astype(np.int64))
    prc_signed = np.where(no_trade, -prc, prc)
    frame = pl.DataFrame(
        {
            "permno": np.tile(permnos, n_days).astype(np.int32),
            "date": np.repeat(days.to_numpy(), stocks),
            "prc": prc_signed.ravel(),
            "ret": ret.ravel(),
            "retx": retx.ravel(),
            "vol": vol.ravel(),
            "shrout": np.tile(rng.integers(5_000, 500_000, stocks), n_days).astype(np.int64),
            "cfacpr": 1.0,
            "cfacshr": 1.0,
            "exchcd": np.tile(exchcd, n_days).astype(np.int8),
            "shrcd": np.int8(11),
            "siccd": np.tile(rng.integers(1000, 9999, stocks), n_days).astype(np.int16),
        }
    )
    crsp = out / "wrds" / "crsp"
    (crsp / "daily").mkdir(parents=True, exist_ok=True)
    for year, part in frame.group_by(pl.col("date").dt.year()):
        part.sort("date", "permno").write_parquet(crsp / "daily" / f"{year[0]}.parquet", compression="zstd")
    pl.DataFrame(
        {
            "permno": permnos,
            "namedt": start,
            "nameendt": date(end_year, 12, 31),
            "ticker": [f"S{p}" for p in permnos],
            "exchcd": exchcd,
            "shrcd": 11,
        }
    ).write_parquet(crsp / "dsenames.parquet")
    ff = out / "wrds" / "ff"
    ff.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "date": days,
            "mktrf": mkt - 0.0001,
            "smb": rng.normal(0, 0.005, n_days),
            "hml": rng.normal(0, 0.005, n_days),
            "rf": 0.0001,
        }
    ).write_parquet(ff / "factors_daily.parquet")
    (out / "analytics" / "backtests").mkdir(parents=True, exist_ok=True)
    manifest = {
        "synthetic": True,
        "generator": "research.sampledata",
        "version": VERSION,
        "seed": seed,
        "stocks": stocks,
        "years": years,
        "rows_crsp_daily": frame.height,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="ci")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    print(json.dumps(generate(a.out, seed=a.seed, **PRESETS[a.preset])))


if __name__ == "__main__":
    main()
