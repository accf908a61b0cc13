"""A point-in-time long-short backtester: a signal known at the close of day t trades from day t+1.

At each rebalance date the top quantile is held long and the bottom quantile short, equal weighted
(each side sums to 1 in absolute value); weights are held until the next rebalance. Transaction
costs are ``cost_bps`` per unit of turnover, charged on the first day of the new weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from research.metrics import turnover


@dataclass(frozen=True)
class BacktestResult:
    returns: pl.DataFrame  # date, gross, cost, net, long, short
    weights: pl.DataFrame  # date (rebalance), permno, weight
    trades: pl.DataFrame  # date (rebalance), permno, weight_change


def _day_permno(date: str) -> pl.Expr:
    """A single int64 key for (date, permno): days since 1970 in the high 32 bits, permno in the low."""
    return (pl.col(date).cast(pl.Int32).cast(pl.Int64) * 2**32 + pl.col("permno").cast(pl.Int64)).alias("_key")


def rebalance_dates(dates: pl.Series, frequency: str) -> pl.Series:
    dates = dates.unique().sort()
    if frequency == "daily":
        return dates
    if frequency == "monthly":
        frame = pl.DataFrame({"date": dates})
        month = pl.col("date").dt.truncate("1mo").alias("month")
        return frame.group_by(month).agg(pl.col("date").max())["date"].sort()
    raise ValueError("frequency must be 'daily' or 'monthly'")


def backtest(
    signal: pl.DataFrame,
    returns: pl.DataFrame,
    *,
    frequency: str = "monthly",
    quantiles: int = 5,
    cost_bps: float = 10.0,
    ret: str = "ret_total",
) -> BacktestResult:
    """``signal``: date, permno, signal (known at the close). ``returns``: date, permno, ``ret``."""
    days = returns["date"].unique().sort()
    rebal = rebalance_dates(days, frequency)
    sig = signal.filter(pl.col("date").is_in(rebal.implode())).drop_nulls("signal")
    sig = sig.with_columns(
        ((pl.col("signal").rank("ordinal").over("date") - 1) * quantiles // pl.len().over("date") + 1).alias("q")
    )
    long = sig.filter(pl.col("q") == quantiles).with_columns((1.0 / pl.len().over("date")).alias("weight"))
    short = sig.filter(pl.col("q") == 1).with_columns((-1.0 / pl.len().over("date")).alias("weight"))
    weights = pl.concat([long, short]).select("date", "permno", "weight").sort("date", "permno")

    # Each trading day uses the weights of the latest rebalance strictly before it.
    calendar = (
        pl.DataFrame({"day": days})
        .join_asof(
            pl.DataFrame({"rebal": weights["date"].unique().sort()}).with_columns(pl.col("rebal").alias("key")),
            left_on="day",
            right_on="key",
            strategy="backward",
            allow_exact_matches=False,
        )
        .drop_nulls("rebal")
    )
    # One integer key (day, permno) instead of two columns: the same rows, joined about 3x faster.
    held = (
        calendar.join(weights, left_on="rebal", right_on="date", maintain_order="left_right")
        .with_columns(_day_permno("day"))
        .join(returns.select(_day_permno("date"), pl.col(ret).alias("r")), on="_key", how="left", maintain_order="left")
        .drop("_key")
    )
    daily = (
        held.group_by("day")
        .agg(
            (pl.col("weight") * pl.col("r").fill_null(0.0)).sum().alias("gross"),
            (pl.col("weight") * pl.col("r").fill_null(0.0)).filter(pl.col("weight") > 0).sum().alias("long"),
            (pl.col("weight") * pl.col("r").fill_null(0.0)).filter(pl.col("weight") < 0).sum().alias("short"),
        )
        .rename({"day": "date"})
        .sort("date")
    )
    to = turnover(weights)
    first_days = calendar.group_by("rebal").agg(pl.col("day").min().alias("date"))
    costs = first_days.join(to, left_on="rebal", right_on="date").select(
        "date", (pl.col("turnover") * cost_bps / 1e4).alias("cost")
    )
    daily = daily.join(costs, on="date", how="left").with_columns(pl.col("cost").fill_null(0.0))
    daily = daily.with_columns((pl.col("gross") - pl.col("cost")).alias("net"))

    wide = weights.pivot(on="date", index="permno", values="weight", sort_columns=True)
    wide = wide.with_columns(pl.exclude("permno").fill_null(0.0))
    trades = (
        wide.unpivot(index="permno", variable_name="date", value_name="weight")
        .with_columns(pl.col("date").str.to_date())
        .sort("permno", "date")
        .with_columns(
            (pl.col("weight") - pl.col("weight").shift(1).over("permno").fill_null(0.0)).alias("weight_change")
        )
        .filter(pl.col("weight_change").abs() > 1e-12)
        .select("date", "permno", "weight_change")
        .sort("date", "permno")
    )
    return BacktestResult(daily.select("date", "gross", "cost", "net", "long", "short"), weights, trades)
