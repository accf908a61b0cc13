"""Alpha definitions and cross-sectional signal utilities (all per date)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import polars as pl


class AlphaDefinition(ABC):
    """An alpha maps data to ``date, permno, signal``: the value known at the close of ``date``."""

    name: str = "alpha"

    @abstractmethod
    def compute(self, **data: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame: ...


def lag(col: str, n: int = 1, by: str = "permno") -> pl.Expr:
    """``col`` from ``n`` rows earlier within the same ``by`` group, null on a group's first ``n`` rows.

    On a panel sorted by permno, date (as ``pit_universe`` returns it) that is the value ``n`` trading
    days earlier: the same as ``pl.col(col).shift(n).over(by)``, without the group-by (about 10x faster).
    """
    same = pl.col(by) == pl.col(by).shift(n)
    return pl.when(same).then(pl.col(col).shift(n)).alias(col)


def winsorize(col: str, lower: float = 0.01, upper: float = 0.99, by: str = "date") -> pl.Expr:
    c = pl.col(col)
    return c.clip(c.quantile(lower).over(by), c.quantile(upper).over(by)).alias(col)


def zscore(col: str, by: str = "date") -> pl.Expr:
    c = pl.col(col)
    return ((c - c.mean().over(by)) / c.std().over(by)).alias(col)


def sector_neutralize(col: str, sector: str = "sector", by: str = "date") -> pl.Expr:
    """Subtract the sector mean on each date."""
    c = pl.col(col)
    return (c - c.mean().over([by, sector])).alias(col)


def sic_sector(siccd: str = "siccd") -> pl.Expr:
    """A coarse sector from the SIC code (its first digit)."""
    return (pl.col(siccd) // 1000).alias("sector")
