"""A point-in-time universe: what an investor could have known and traded on each day."""

from __future__ import annotations

import polars as pl

from research.data import permno_date_key
from research.signals import lag

MISSING_PERFORMANCE_DLRET = -0.30  # the convention for a 5xx delisting without a delisting return


def delisting_returns(delist: pl.DataFrame) -> pl.DataFrame:
    """permno, date (= dlstdt), dlret with the -30 % convention for missing performance delistings."""
    perf = (pl.col("dlstcd") >= 500) & (pl.col("dlstcd") < 600)
    return delist.select(
        "permno",
        pl.col("dlstdt").alias("date"),
        pl.when(pl.col("dlret").is_null() & perf)
        .then(MISSING_PERFORMANCE_DLRET)
        .otherwise(pl.col("dlret").fill_null(0.0))
        .alias("dlret"),
    )


def pit_universe(
    daily: pl.LazyFrame | pl.DataFrame,
    delist: pl.DataFrame,
    *,
    min_price: float = 5.0,
    share_codes: tuple[int, ...] = (10, 11),
    exchanges: tuple[int, ...] = (1, 2, 3),
) -> pl.LazyFrame:
    """Common stocks on NYSE/AMEX/NASDAQ whose *previous* day's |prc| (raw, not adjusted) was at least
    ``min_price``; the day's return includes the delisting return on the delisting date. Names that
    later delist stay in the universe until they do (no survivorship bias).

    Adds ``ret_total`` (return including delisting) and ``me`` (market equity, $ thousands). Rows come
    sorted by permno, date. Lazy: select the columns you need before ``collect()`` and only those are read.
    """
    lf = daily.lazy().join(delisting_returns(delist).lazy(), on=["permno", "date"], how="left")
    lf = lf.sort(permno_date_key(lf.collect_schema()))  # after the join, which need not keep any order
    lf = lf.with_columns(lag("prc").abs().alias("prc_lag"))  # the name's previous trading day
    lf = lf.select(pl.exclude("dlret"), "dlret")  # columns in the order they always had: ..., prc_lag, dlret
    return lf.filter(
        pl.col("shrcd").is_in(share_codes) & pl.col("exchcd").is_in(exchanges) & (pl.col("prc_lag") >= min_price)
    ).with_columns(
        ((1 + pl.col("ret")) * (1 + pl.col("dlret").fill_null(0.0)) - 1).alias("ret_total"),
        (pl.col("prc").abs() * pl.col("shrout")).alias("me"),
    )


def survivors_only(universe: pl.LazyFrame, delist: pl.DataFrame) -> pl.LazyFrame:
    """The classic mistake: keep only names that never delisted (uses the future). For comparison only."""
    return universe.filter(~pl.col("permno").is_in(delist["permno"].implode()))
