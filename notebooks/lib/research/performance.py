"""Performance statistics of a daily return series: CAGR, volatility, Sharpe, Sortino, drawdown, alpha, beta."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

PERIODS = 252


def cumulative(returns: pl.Series) -> pl.Series:
    return (1 + returns.fill_null(0.0)).cum_prod()


def max_drawdown(returns: pl.Series) -> float:
    wealth = cumulative(returns)
    return float((wealth / wealth.cum_max() - 1).min())


def alpha_beta(returns: pl.Series, benchmark: pl.Series, periods: int = PERIODS) -> tuple[float, float]:
    """OLS of returns on benchmark returns: (annualised alpha, beta)."""
    y, x = returns.to_numpy(), benchmark.to_numpy()
    design = np.column_stack([np.ones_like(x), x])
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(a * periods), float(b)


def stats(
    returns: pl.Series, benchmark: pl.Series | None = None, rf: pl.Series | None = None, periods: int = PERIODS
) -> dict[str, float]:
    r = returns.fill_null(0.0)
    excess = r - (rf.fill_null(0.0) if rf is not None else 0.0)
    n = r.len()
    growth = float(cumulative(r)[-1])
    mean, sd = float(excess.mean()), float(excess.std())
    downside = float(np.sqrt(np.mean(np.minimum(excess.to_numpy(), 0.0) ** 2)))
    out = {
        "cagr": growth ** (periods / n) - 1 if n else float("nan"),
        "volatility": float(r.std()) * math.sqrt(periods),
        "sharpe": mean / sd * math.sqrt(periods) if sd else float("nan"),
        "sortino": mean / downside * math.sqrt(periods) if downside else float("nan"),
        "max_drawdown": max_drawdown(r),
    }
    if benchmark is not None:
        out["alpha"], out["beta"] = alpha_beta(r, benchmark.fill_null(0.0), periods)
    return out
