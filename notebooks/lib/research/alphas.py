"""Alphas shipped with the library. SUE: standardised unexpected earnings, known from the report date."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from research.signals import AlphaDefinition, winsorize, zscore


def sue_by_quarter(fundq: pl.DataFrame) -> pl.DataFrame:
    """gvkey, datadate, rdq, sue: EPS change on the same quarter last year over its trailing volatility."""
    f = fundq.sort("gvkey", "datadate").with_columns(
        (pl.col("epspxq") - pl.col("epspxq").shift(4).over("gvkey")).alias("d4")
    )
    f = f.with_columns((pl.col("d4") / pl.col("d4").rolling_std(8, min_samples=4).shift(1).over("gvkey")).alias("sue"))
    return f.select("gvkey", "datadate", "rdq", "sue").drop_nulls("sue")


def ccm_links(links: pl.DataFrame) -> pl.DataFrame:
    """Primary CCM links (LC/LU, P/C): gvkey -> permno."""
    return links.filter(pl.col("linktype").is_in(["LC", "LU"]) & pl.col("linkprim").is_in(["P", "C"])).select(
        "gvkey", pl.col("lpermno").alias("permno")
    )


def on_trading_days(
    quarterly: pl.DataFrame, panel: pl.DataFrame, key: str, stale_after: timedelta = timedelta(days=120)
) -> pl.DataFrame:
    """Carry each quarter's value forward from ``key`` (when it became known) over the date/permno panel."""
    q = quarterly.with_columns(pl.col(key).alias("_known")).sort("_known")
    return (
        panel.sort("date")
        .join_asof(
            q,
            left_on="date",
            right_on="_known",
            by="permno",
            strategy="backward",
            tolerance=stale_after,
            check_sortedness=False,
        )
        .drop("_known")
    )


class SUE(AlphaDefinition):
    """Post-earnings-announcement drift: long high SUE, short low SUE, from the report date ``rdq``.

    ``key="datadate"`` reproduces the look-ahead mistake (the quarter end, weeks before the report).
    """

    name = "sue"

    def __init__(self, key: str = "rdq") -> None:
        if key not in ("rdq", "datadate"):
            raise ValueError("key must be 'rdq' (correct) or 'datadate' (look-ahead)")
        self.key = key

    def compute(self, *, fundq: pl.DataFrame, links: pl.DataFrame, panel: pl.DataFrame) -> pl.DataFrame:
        quarterly = sue_by_quarter(fundq).join(ccm_links(links), on="gvkey")
        known = on_trading_days(quarterly, panel.select("date", "permno"), self.key)
        return (
            known.drop_nulls("sue")
            .with_columns(winsorize("sue"))
            .with_columns(zscore("sue"))
            .select("date", "permno", pl.col("sue").alias("signal"), "datadate", "rdq")
        )
