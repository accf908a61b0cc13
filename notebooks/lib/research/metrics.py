"""Signal metrics: IC, rank IC, t-stats, IC IR, decay, quantile returns and spreads, turnover, rank autocorrelation.

Inputs are long frames keyed by ``date, permno``. Forward returns start the day *after* the signal.

t-statistics are Newey-West (``research.inference``) with ``horizon - 1`` lags: daily values of
``h``-day forward returns overlap by ``h - 1`` days, and the naive ``mean / sd * sqrt(n)`` (reported
as ``t_naive``) treats them as independent, overstating significance by about ``sqrt(h)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import polars as pl

from research.inference import mean_test


def _sorted_by_permno_date(df: pl.DataFrame) -> bool:
    if df.height < 2:
        return True
    p, d = pl.col("permno"), pl.col("date")
    ok = (p > p.shift(1)) | ((p == p.shift(1)) & (d > d.shift(1)))
    return bool(df.select(ok.slice(1).all()).item())


def forward_returns(returns: pl.DataFrame, horizons: Iterable[int], ret: str = "ret_total") -> pl.DataFrame:
    """``fwd_<h>``: compounded return over days t+1 .. t+h, per permno (sorted by permno, date)."""
    df = returns if _sorted_by_permno_date(returns) else returns.sort("permno", "date")
    df = df.with_columns(pl.col(ret).fill_null(0.0).log1p().alias("_lr"))
    cols = []
    for h in horizons:
        # sum of log returns over (t, t+h]: reversed rolling window on the shifted series
        cols.append((pl.col("_lr").shift(-1).rolling_sum(h).shift(-(h - 1)).over("permno").exp() - 1).alias(f"fwd_{h}"))
    return df.with_columns(cols).drop("_lr")


def horizon_of(target: str) -> int | None:
    """The horizon in days of a ``fwd_<h>`` column (as ``forward_returns`` names them), else None."""
    m = re.fullmatch(r"fwd_(\d+)", target)
    return int(m.group(1)) if m else None


def _ic_frames(df: pl.DataFrame, signal: str, targets: list[str], method: str) -> dict[str, pl.DataFrame]:
    """Per-date IC of ``signal`` against each target, in one pass over the dates."""
    if method not in ("spearman", "pearson"):
        raise ValueError("method must be 'spearman' or 'pearson'")
    if len(targets) == 1:  # drop the incomplete rows once
        clean = df.select("date", signal, targets[0]).drop_nulls([signal, targets[0]])
        wide = clean.group_by("date").agg(pl.corr(signal, targets[0], method=method).alias("ic0"), pl.len().alias("n0"))
    else:  # one group_by for all targets, each on its own complete rows
        aggs = []
        for i, target in enumerate(targets):
            both = pl.col(signal).is_not_null() & pl.col(target).is_not_null()
            x, y = pl.col(signal).filter(both), pl.col(target).filter(both)
            aggs += [pl.corr(x, y, method=method).alias(f"ic{i}"), both.sum().cast(pl.UInt32).alias(f"n{i}")]
        wide = df.group_by("date").agg(aggs)
    out = {}
    for i, target in enumerate(targets):
        frame = wide.select("date", pl.col(f"ic{i}").alias("ic"), pl.col(f"n{i}").alias("n"))
        frame = frame.filter(pl.col("n") >= 5).sort("date")
        h = horizon_of(target)
        out[target] = frame.with_columns(pl.lit(h, dtype=pl.Int32).alias("horizon")) if h else frame
    return out


def ic_series(df: pl.DataFrame, signal: str, target: str, method: str = "spearman") -> pl.DataFrame:
    """Per-date correlation between the signal and the target (rank IC by default): date, ic, n.

    A ``fwd_<h>`` target adds a ``horizon`` column, which ``ic_summary`` uses for its Newey-West lags.
    """
    return _ic_frames(df, signal, [target], method)[target]


def ic_summary(ic: pl.DataFrame, horizon: int | None = None) -> dict[str, float]:
    """Mean IC, sd, IC IR (mean / sd), n and two t-statistics of the mean IC.

    ``t``: Newey-West with ``horizon - 1`` lags (``nw_lags``), valid for overlapping forward returns.
    ``t_naive``: mean / sd * sqrt(n), which treats the days as independent (too high when they overlap).
    ``horizon`` defaults to the ``horizon`` column ``ic_series`` adds for ``fwd_<h>`` targets, else 1.
    """
    if horizon is None:
        horizon = int(ic["horizon"][0]) if "horizon" in ic.columns and ic.height else 1
    values = ic["ic"].drop_nulls()
    n = values.len()
    mean = float(values.mean()) if n else float("nan")
    sd = float(values.std()) if n > 1 else float("nan")
    t_naive = mean / sd * math.sqrt(n) if sd else float("nan")
    nw = mean_test(values.to_numpy(), max(horizon - 1, 0))
    return {
        "mean": mean,
        "sd": sd,
        "t": nw["t"],
        "t_naive": t_naive,
        "nw_lags": nw["nw_lags"],
        "ir": mean / sd if sd else float("nan"),
        "n": n,
    }


def ic_by_horizon(
    df: pl.DataFrame, signal: str, horizons: Iterable[int], method: str = "spearman"
) -> dict[int, pl.DataFrame]:
    """``ic_series`` against each ``fwd_<h>`` column, computed in one pass over the dates: {h: series}."""
    horizons = list(horizons)
    frames = _ic_frames(df, signal, [f"fwd_{h}" for h in horizons], method)
    return {h: frames[f"fwd_{h}"] for h in horizons}


def ic_decay(df: pl.DataFrame, signal: str, horizons: Iterable[int], method: str = "spearman") -> pl.DataFrame:
    """IC summary (``ic_summary``) against each forward horizon, one row per horizon (``fwd_<h>`` must exist)."""
    ics = ic_by_horizon(df, signal, horizons, method)
    return pl.DataFrame([{"horizon": h, **ic_summary(ic, h)} for h, ic in ics.items()])


def _quantile_by_date(df: pl.DataFrame, signal: str, target: str, q: int) -> pl.DataFrame:
    """date, quantile, mean target: the signal's quantile (1 = lowest) by ordinal rank on each date."""
    ranked = df.select("date", signal, target).drop_nulls([signal, target])
    ranked = ranked.with_columns(
        ((pl.col(signal).rank("ordinal").over("date") - 1) * q // pl.len().over("date") + 1).alias("quantile")
    )
    return ranked.group_by("date", "quantile").agg(pl.col(target).mean()).sort("date", "quantile")


def quantile_returns(df: pl.DataFrame, signal: str, target: str, q: int = 5) -> pl.DataFrame:
    """Mean target per signal quantile (1 = lowest), averaged over dates."""
    per_date = _quantile_by_date(df, signal, target, q)
    return (
        per_date.group_by("quantile").agg(pl.col(target).mean().alias("mean"), pl.len().alias("dates")).sort("quantile")
    )


def quantile_spread(
    df: pl.DataFrame, signal: str, target: str, q: int = 5, horizon: int | None = None
) -> dict[str, float]:
    """Top-minus-bottom quantile spread of the target, per date, with Newey-West and naive t-statistics.

    Lags are ``horizon - 1`` (``horizon`` defaults to the ``fwd_<h>`` target's h, else 1). Returns
    mean, se, t, se_naive, t_naive, nw_lags, n (dates on which both quantiles exist).
    """
    if horizon is None:
        horizon = horizon_of(target) or 1
    per_date = _quantile_by_date(df, signal, target, q)
    wide = per_date.filter(pl.col("quantile").is_in([1, q])).pivot(
        on="quantile", index="date", values=target, sort_columns=True
    )
    spread = wide.sort("date").select((pl.col(str(q)) - pl.col("1")).alias("spread")).drop_nulls()
    return mean_test(spread["spread"].to_numpy(), max(horizon - 1, 0))


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
