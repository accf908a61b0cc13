"""The research library against small hand-computed cases (runs on the host; polars, numpy, linearmodels)."""

from __future__ import annotations

import math
import sys
from datetime import date, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from launcher.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "notebooks" / "lib"))

from research.backtest import backtest  # noqa: E402
from research.famamacbeth import fama_macbeth  # noqa: E402
from research.metrics import (  # noqa: E402
    forward_returns,
    ic_series,
    ic_summary,
    quantile_returns,
    rank_autocorrelation,
    turnover,
)
from research.performance import alpha_beta, max_drawdown, stats  # noqa: E402
from research.signals import winsorize, zscore  # noqa: E402
from research.universe import delisting_returns, pit_universe  # noqa: E402

D = [date(2024, 1, 1) + timedelta(days=i) for i in range(10)]


def test_rank_ic_is_plus_or_minus_one_for_monotone_relations():
    """Perfectly ordered signal/target gives rank IC 1; reversed gives -1."""
    df = pl.DataFrame(
        {
            "date": [D[0]] * 5 + [D[1]] * 5,
            "permno": list(range(5)) * 2,
            "signal": [1.0, 2, 3, 4, 5] * 2,
            "target": [0.1, 0.2, 0.3, 0.4, 0.5] + [5.0, 4, 3, 2, 1],
        }
    )
    assert ic_series(df, "signal", "target")["ic"].to_list() == pytest.approx([1.0, -1.0])


def test_ic_summary_formula():
    """t = mean / sd * sqrt(n), IR = mean / sd."""
    s = ic_summary(pl.DataFrame({"ic": [0.1, 0.2, 0.3]}))
    sd = float(np.std([0.1, 0.2, 0.3], ddof=1))
    assert s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(sd)
    assert s["t"] == pytest.approx(0.2 / sd * math.sqrt(3)) and s["ir"] == pytest.approx(0.2 / sd) and s["n"] == 3


def test_forward_returns_start_the_day_after():
    """fwd_2 at day t compounds the returns of t+1 and t+2; none at the end."""
    df = pl.DataFrame({"date": D[:4], "permno": [1] * 4, "ret_total": [0.5, 0.1, -0.2, 0.3]})
    out = forward_returns(df, [1, 2])
    assert out["fwd_1"].to_list()[:3] == pytest.approx([0.1, -0.2, 0.3])
    assert out["fwd_2"].to_list()[0] == pytest.approx(1.1 * 0.8 - 1)
    assert out["fwd_2"].to_list()[1] == pytest.approx(0.8 * 1.3 - 1)
    assert out["fwd_2"][3] is None


def test_quantile_returns_and_turnover_and_autocorrelation():
    """Two quantiles split the cross-section; turnover counts entering and leaving weights."""
    df = pl.DataFrame({"date": [D[0]] * 4, "permno": [1, 2, 3, 4], "s": [1.0, 2, 3, 4], "t": [0.0, 0.0, 1.0, 1.0]})
    assert quantile_returns(df, "s", "t", q=2)["mean"].to_list() == [0.0, 1.0]
    w = pl.DataFrame({"date": [D[0], D[0], D[1], D[1]], "permno": [1, 2, 1, 3], "weight": [0.5, -0.5, 0.5, -0.5]})
    assert turnover(w)["turnover"].to_list() == pytest.approx([1.0, 1.0])
    same = pl.DataFrame({"date": [D[0]] * 5 + [D[1]] * 5, "permno": list(range(5)) * 2, "x": [1.0, 2, 3, 4, 5] * 2})
    assert rank_autocorrelation(same, "x") == pytest.approx(1.0)


def test_winsorize_and_zscore_per_date():
    """Extremes are clipped to the date's quantiles; z-scores have mean 0, sd 1 per date."""
    df = pl.DataFrame({"date": [D[0]] * 5, "x": [1.0, 2, 3, 4, 100]})
    clipped = df.with_columns(winsorize("x", 0.0, 0.75))["x"].to_list()
    assert clipped[-1] == 4.0
    z = df.with_columns(zscore("x"))["x"]
    assert float(z.mean()) == pytest.approx(0.0) and float(z.std()) == pytest.approx(1.0)


def test_performance_statistics():
    """Drawdown, beta and alpha of constructed series."""
    assert max_drawdown(pl.Series([0.1, -0.5, 0.2])) == pytest.approx(-0.5)
    bench = pl.Series(np.random.default_rng(1).normal(0, 0.01, 500))
    a, b = alpha_beta(bench * 2 + 0.001, bench)
    assert b == pytest.approx(2.0) and a == pytest.approx(0.252)
    s = stats(pl.Series([0.01] * 252))
    assert s["cagr"] == pytest.approx(1.01**252 - 1) and s["max_drawdown"] == 0.0


def test_delisting_convention_and_pit_universe():
    """Missing 5xx dlret is -30 %, others 0; the price filter uses yesterday's raw price; shrcd filters."""
    delist = pl.DataFrame(
        {"permno": [1, 2, 3], "dlstdt": [D[2]] * 3, "dlstcd": [551, 231, 551], "dlret": [None, None, -0.5]}
    )
    assert delisting_returns(delist)["dlret"].to_list() == [-0.30, 0.0, -0.5]
    daily = pl.DataFrame(
        {
            "permno": [1, 1, 1, 9, 9, 9],
            "date": D[:3] * 2,
            "prc": [6.0, 4.0, 6.0, 10.0, 10.0, 10.0],
            "ret": [0.0, 0.1, 0.2] * 2,
            "shrout": [1000] * 6,
            "shrcd": [11, 11, 11, 31, 31, 31],
            "exchcd": [3] * 6,
        }
    )
    uni = pit_universe(daily, delist).collect()
    assert uni["permno"].to_list() == [1]  # shrcd 31 out; day 1 has no lag; day 3 follows a $4 close
    assert uni["date"].to_list() == [D[1]]


def test_backtest_trades_from_the_next_day_and_charges_costs():
    """A signal at the close of day 0 earns day 1's return; costs are turnover x bp on that first day."""
    rets = pl.DataFrame(
        {"date": D[:3] * 2, "permno": [1] * 3 + [2] * 3, "ret_total": [0.5, 0.02, 0.01, 0.5, -0.01, 0.03]}
    )
    signal = pl.DataFrame({"date": [D[0], D[0]], "permno": [1, 2], "signal": [1.0, -1.0]})
    res = backtest(signal, rets, frequency="daily", quantiles=2, cost_bps=10).returns
    assert res["date"].to_list() == [D[1], D[2]]
    assert res["gross"].to_list() == pytest.approx([0.03, -0.02])
    assert res["cost"].to_list() == pytest.approx([2 * 10 / 1e4, 0.0])


def test_fama_macbeth_matches_linearmodels():
    """Our two-pass estimates and standard errors equal linearmodels' on a random panel."""
    from linearmodels import FamaMacBeth

    rng = np.random.default_rng(3)
    idx = pd.MultiIndex.from_product([range(40), pd.date_range("2020-01-31", periods=24, freq="ME")])
    x = pd.DataFrame({"const": 1.0, "b": rng.normal(size=len(idx)), "c": rng.normal(size=len(idx))}, index=idx)
    y = pd.DataFrame({"y": 0.5 * x["b"] - 0.2 * x["c"] + rng.normal(size=len(idx))}, index=idx)
    ours = fama_macbeth(y, x)
    ref = FamaMacBeth(y["y"], x).fit()
    assert np.allclose(ours["estimate"], ref.params, atol=1e-12)
    assert np.allclose(ours["std_error"], ref.std_errors, atol=1e-12)
