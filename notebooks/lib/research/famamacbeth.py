"""Fama-MacBeth (1973) two-pass regressions, in numpy, checked against linearmodels in the tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def fama_macbeth(y: pd.DataFrame, x: pd.DataFrame) -> pd.DataFrame:
    """Cross-sectional OLS of ``y`` on ``x`` per time period, then the time-series mean of the slopes.

    ``y``: one column, ``x``: regressors (include a ``const`` column for an intercept); both indexed by
    (entity, time). Returns estimate, unadjusted standard error (sd of the period estimates / sqrt(T))
    and t-statistic per regressor, as linearmodels' ``FamaMacBeth(...).fit()`` reports them.
    """
    frame = pd.concat([y, x], axis=1).dropna()
    codes, _ = pd.factorize(frame.index.get_level_values(1), sort=True)
    order = np.argsort(codes, kind="stable")  # grouped by period, rows in their original order
    order = order[codes[order] >= 0]  # rows without a period (as groupby drops them)
    xs = frame[x.columns].to_numpy()[order]
    ys = frame[y.columns[0]].to_numpy()[order]
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    gammas = []
    for rows in np.split(np.arange(len(order)), bounds):
        if len(rows) <= x.shape[1]:
            continue
        coef, *_ = np.linalg.lstsq(xs[rows], ys[rows], rcond=None)
        gammas.append(coef)
    g = np.asarray(gammas)
    est = g.mean(axis=0)
    se = g.std(axis=0, ddof=1) / np.sqrt(len(g))
    return pd.DataFrame({"estimate": est, "std_error": se, "t": est / se}, index=list(x.columns))
