"""Standard errors a referee accepts for overlapping and autocorrelated series: Newey-West (HAC).

Daily ICs of 20-day forward returns overlap: consecutive values share 19 of their 20 days, so they
are strongly autocorrelated and ``mean / sd * sqrt(n)`` overstates the t-statistic by roughly
``sqrt(horizon)``. Newey and West (1987) weight the autocovariances up to ``lags`` with the Bartlett
kernel ``1 - l / (lags + 1)``; with ``lags >= horizon - 1`` the overlap is covered.

Conventions follow statsmodels' ``OLS(...).fit(cov_type="HAC", cov_kwds={"maxlags": lags})`` (no
small-sample correction), which the tests use as the independent check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def newey_west_lags(n: int) -> int:
    """The Newey-West (1994) rule of thumb for a series without a known overlap: floor(4 (n/100)^(2/9))."""
    return int(math.floor(4 * (n / 100) ** (2 / 9))) if n > 0 else 0


def hac_meat(scores: np.ndarray, lags: int) -> np.ndarray:
    """Sum over t of u_t u_t' plus Bartlett-weighted autocovariance sums up to ``lags`` (not divided by n).

    ``scores``: n x k (or length n) array of moment contributions, e.g. x_t * residual_t.
    """
    u = np.asarray(scores, dtype=float)
    if u.ndim == 1:
        u = u[:, None]
    s = u.T @ u
    for lag in range(1, min(lags, len(u) - 1) + 1):
        gamma = u[lag:].T @ u[:-lag]
        s += (1 - lag / (lags + 1)) * (gamma + gamma.T)
    return s


def mean_test(values: np.ndarray, lags: int) -> dict[str, float]:
    """Mean of a series with its naive and Newey-West standard errors and t-statistics.

    Naive: sd (ddof 1) / sqrt(n), which assumes independent observations. Newey-West: the standard
    error of the mean from a regression on a constant with HAC errors (``lags`` lags).
    """
    x = np.asarray(values, dtype=float)  # a NaN anywhere gives NaN, as the mean itself would
    n = len(x)
    if n < 2:
        nan = float("nan")
        return {"mean": nan, "se": nan, "t": nan, "se_naive": nan, "t_naive": nan, "nw_lags": lags, "n": n}
    mean = float(x.mean())
    se = math.sqrt(float(hac_meat(x - mean, lags)[0, 0])) / n
    se_naive = float(x.std(ddof=1)) / math.sqrt(n)
    return {
        "mean": mean,
        "se": se,
        "t": mean / se if se else float("nan"),
        "se_naive": se_naive,
        "t_naive": mean / se_naive if se_naive else float("nan"),
        "nw_lags": lags,
        "n": n,
    }


@dataclass(frozen=True)
class OLSResult:
    """OLS estimates with Newey-West standard errors (``lags`` lags; 0 gives White's HC0)."""

    names: list[str]
    params: np.ndarray
    std_errors: np.ndarray
    tvalues: np.ndarray
    rsquared: float
    nobs: int
    lags: int

    def table(self) -> dict[str, dict[str, float]]:
        return {
            name: {"estimate": float(b), "std_error": float(s), "t": float(t)}
            for name, b, s, t in zip(self.names, self.params, self.std_errors, self.tvalues, strict=True)
        }


def ols_hac(y: np.ndarray, x: np.ndarray, names: list[str], lags: int, add_constant: bool = True) -> OLSResult:
    """OLS of ``y`` on ``x`` (n x k) with Newey-West (HAC, Bartlett) standard errors.

    Equals statsmodels' ``OLS(y, add_constant(x)).fit(cov_type="HAC", cov_kwds={"maxlags": lags})``.
    Rows with a NaN anywhere are dropped.
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if add_constant:
        x = np.column_stack([np.ones(len(x)), x])
        names = ["const", *names]
    keep = ~(np.isnan(y) | np.isnan(x).any(axis=1))
    y, x = y[keep], x[keep]
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    bread = np.linalg.inv(x.T @ x)
    cov = bread @ hac_meat(x * resid[:, None], lags) @ bread
    se = np.sqrt(np.diag(cov))
    centered = y - y.mean()
    r2 = 1 - float(resid @ resid) / float(centered @ centered) if add_constant else float("nan")
    return OLSResult(list(names), beta, se, beta / se, r2, len(y), lags)
