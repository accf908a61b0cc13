"""Performance statistics of a daily return series: CAGR, volatility, Sharpe (with its standard error),
Sortino, drawdown, alpha, beta."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from research.inference import hac_meat, newey_west_lags

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


def sharpe_inference(returns: pl.Series, lags: int | None = None, periods: int = PERIODS) -> dict[str, float]:
    """The annualised Sharpe ratio of ``returns`` (already in excess of the risk-free rate) and its standard errors.

    ``se_iid``: Lo (2002) for independent normal returns, sqrt((1 + SR^2 / 2) / n) per period.
    ``se``: Lo (2002)'s GMM version with Newey-West weights: the delta method on the mean and variance,
    robust to fat tails, skewness (it reduces to Mertens 2002 with no lags) and autocorrelation
    (``lags``, default the Newey-West rule of thumb for n). Both are annualised with sqrt(periods).
    """
    series = returns.fill_null(0.0)
    r = series.to_numpy().astype(float)
    n = len(r)
    lags = newey_west_lags(n) if lags is None else lags
    nan = float("nan")
    if n < 3 or not r.std():
        return {"sharpe": nan, "se": nan, "se_iid": nan, "nw_lags": lags, "n": n}
    mu, var = r.mean(), r.var()
    sr = mu / math.sqrt(var)  # per period, with the 1 / n moments of the GMM estimator
    moments = np.column_stack([r - mu, (r - mu) ** 2 - var])
    omega = hac_meat(moments, lags) / n  # long-run covariance of the two moments
    grad = np.array([1 / math.sqrt(var), -mu / (2 * var**1.5)])  # d SR / d (mean, variance)
    se = math.sqrt(float(grad @ omega @ grad) / n)
    return {
        "sharpe": float(series.mean()) / float(series.std()) * math.sqrt(periods),  # as in stats()
        "se": se * math.sqrt(periods),
        "se_iid": math.sqrt((1 + sr**2 / 2) / n) * math.sqrt(periods),
        "nw_lags": lags,
        "n": n,
    }


def stats(
    returns: pl.Series, benchmark: pl.Series | None = None, rf: pl.Series | None = None, periods: int = PERIODS
) -> dict[str, float]:
    """CAGR, volatility, Sharpe and ``sharpe_se`` (its Newey-West standard error, ``sharpe_inference``), Sortino,
    max drawdown; alpha and beta against ``benchmark`` when given. Annualised with ``periods`` per year."""
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
        "sharpe_se": sharpe_inference(excess, periods=periods)["se"],
        "sortino": mean / downside * math.sqrt(periods) if downside else float("nan"),
        "max_drawdown": max_drawdown(r),
    }
    if benchmark is not None:
        out["alpha"], out["beta"] = alpha_beta(r, benchmark.fill_null(0.0), periods)
    return out
