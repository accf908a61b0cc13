"""Signal metrics: IC, rank IC, t-stat, IC IR, decay, quantile returns, turnover, rank autocorrelation.

Inputs are long frames keyed by ``date, permno``. Forward returns start the day *after* the signal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import polars as pl


def forward_returns(returns: pl.DataFrame, horizons: Iterable[int], ret: str = "ret_total") -> pl.DataFrame:
    """``fwd_<h>``: compounded return over days t+1 .. t+h, per permno."""
    df = returns.sort("permno", "date").with_columns(pl.col(ret).fill_null(0.0).log1p().alias("_lr"))
    cols = []
    for h in horizons:
        # sum of log returns over (t, t+h]: reversed rolling window on the shifted series
        cols.append((pl.col("_lr").shift(-1).rolling_sum(h).shift(-(h - 1)).over("permno").exp() - 1).alias(f"fwd_{h}"))
    return df.with_columns(cols).drop("_lr")


def ic_series(df: pl.DataFrame, signal: str, target: str, method: str = "spearman") -> pl.DataFrame:
    """Per-date correlation between the signal and the target (rank IC by default)."""
    clean = df.drop_nulls([signal, target])
    if method == "spearman":
        clean = clean.with_columns(
            pl.col(signal).rank().over("date").alias(signal), pl.col(target).rank().over("date").alias(target)
        )
    return (
        clean.group_by("date")
        .agg(pl.corr(signal, target).alias("ic"), pl.len().alias("n"))
        .filter(pl.col("n") >= 5)
        .sort("date")
    )


def ic_summary(ic: pl.DataFrame) -> dict[str, float]:
    """Mean IC, its standard deviation, t-statistic (mean / sd * sqrt(n)), IC IR (mean / sd), n."""
    values = ic["ic"].drop_nulls()
    n = values.len()
    mean = float(values.mean()) if n else float("nan")
    sd = float(values.std()) if n > 1 else float("nan")
    t = mean / sd * math.sqrt(n) if sd else float("nan")
    return {"mean": mean, "sd": sd, "t": t, "ir": mean / sd if sd else float("nan"), "n": n}


def ic_decay(df: pl.DataFrame, signal: str, horizons: Iterable[int], method: str = "spearman") -> pl.DataFrame:
    """Mean IC against each forward horizon (``fwd_<h>`` columns must exist)."""
    rows = [{"horizon": h, **ic_summary(ic_series(df, signal, f"fwd_{h}", method))} for h in horizons]
    return pl.DataFrame(rows)


def quantile_returns(df: pl.DataFrame, signal: str, target: str, q: int = 5) -> pl.DataFrame:
    """Mean target per signal quantile (1 = lowest), averaged over dates."""
    ranked = df.drop_nulls([signal, target]).with_columns(
        ((pl.col(signal).rank("ordinal").over("date") - 1) * q // pl.len().over("date") + 1).alias("quantile")
    )
    per_date = ranked.group_by("date", "quantile").agg(pl.col(target).mean())
    return (
        per_date.group_by("quantile").agg(pl.col(target).mean().alias("mean"), pl.len().alias("dates")).sort("quantile")
    )


def turnover(weights: pl.DataFrame) -> pl.DataFrame:
    """Per rebalance date: sum over names of |w_t - w_previous| (a name entering or leaving counts fully).

    The first date counts the whole book (from cash).
    """
    wide = weights.pivot(on="date", index="permno", values="weight", sort_columns=True)
    wide = wide.with_columns(pl.exclude("permno").fill_null(0.0))
    dates = sorted(weights["date"].unique().to_list())
    cols = [str(d) for d in dates]
    wide = wide.rename({c: str(c) for c in wide.columns})
    out = [float(wide[cols[0]].abs().sum())]
    out += [float((wide[b] - wide[a]).abs().sum()) for a, b in zip(cols, cols[1:], strict=False)]
    return pl.DataFrame({"date": dates, "turnover": out})


def rank_autocorrelation(df: pl.DataFrame, signal: str, lag: int = 1) -> float:
    """Mean over dates of the rank correlation between the signal and its value ``lag`` dates earlier."""
    dates = df["date"].unique().sort()
    shifted = pl.DataFrame({"date": dates[lag:], "prev_date": dates[:-lag]})
    cur = df.select("date", "permno", pl.col(signal).alias("cur")).join(shifted, on="date")
    prev = df.select(pl.col("date").alias("prev_date"), "permno", pl.col(signal).alias("prev"))
    both = cur.join(prev, on=["prev_date", "permno"]).drop_nulls()
    return float(ic_series(both, "cur", "prev")["ic"].mean())
