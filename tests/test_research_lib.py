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
from research.inference import mean_test, newey_west_lags, ols_hac  # noqa: E402
from research.metrics import (  # noqa: E402
    forward_returns,
    ic_by_horizon,
    ic_decay,
    ic_series,
    ic_summary,
    quantile_returns,
    quantile_spread,
    rank_autocorrelation,
    turnover,
)
from research.performance import alpha_beta, max_drawdown, sharpe_inference, stats  # noqa: E402
from research.signals import lag, winsorize, zscore  # noqa: E402
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
    """t_naive = mean / sd * sqrt(n), IR = mean / sd; with horizon 1 the t is Newey-West with no lags (HC0)."""
    s = ic_summary(pl.DataFrame({"ic": [0.1, 0.2, 0.3]}))
    sd = float(np.std([0.1, 0.2, 0.3], ddof=1))
    assert s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(sd)
    assert s["t_naive"] == pytest.approx(0.2 / sd * math.sqrt(3)) and s["ir"] == pytest.approx(0.2 / sd) and s["n"] == 3
    assert s["nw_lags"] == 0 and s["t"] == pytest.approx(0.2 / (math.sqrt(0.1**2 + 0 + 0.1**2) / 3))


def _overlapping_ic(n: int = 1500, horizon: int = 20, seed: int = 5) -> np.ndarray:
    """Daily values that overlap like ICs of h-day forward returns: a moving sum of h daily shocks."""
    shocks = np.random.default_rng(seed).normal(0.0, 0.01, n + horizon - 1)
    return 0.004 + np.convolve(shocks, np.ones(horizon) / np.sqrt(horizon), mode="valid")


def test_newey_west_t_matches_statsmodels_and_is_below_the_naive_t():
    """On overlapping 20-day values the IC t equals statsmodels' HAC (maxlags 19) to 1e-8 and is far below naive."""
    import statsmodels.api as sm

    values = _overlapping_ic()
    dates = [date(2020, 1, 1) + timedelta(days=i) for i in range(len(values))]
    ic = pl.DataFrame({"date": dates, "ic": values, "n": [100] * len(values)})
    summary = ic_summary(ic, horizon=20)
    ref = sm.OLS(values, np.ones(len(values))).fit(cov_type="HAC", cov_kwds={"maxlags": 19})
    assert summary["nw_lags"] == 19
    assert abs(summary["t"] - float(ref.tvalues[0])) < 1e-8
    assert summary["t_naive"] > 2.5 * summary["t"]  # about sqrt(20) = 4.5 times for a pure moving sum
    # the horizon is taken from the fwd_<h> target ic_series records
    assert ic_summary(ic.with_columns(pl.lit(20).alias("horizon")))["t"] == summary["t"]
    test = mean_test(values, 19)
    assert test["se"] == pytest.approx(float(ref.bse[0]), rel=1e-10) and test["t_naive"] == summary["t_naive"]


def test_ols_hac_matches_statsmodels():
    """Coefficients, Newey-West standard errors, t-statistics and R2 equal statsmodels' OLS with HAC errors."""
    import statsmodels.api as sm

    rng = np.random.default_rng(11)
    x = rng.normal(size=(600, 3))
    e = np.convolve(rng.normal(size=605), np.ones(6), mode="valid")  # autocorrelated errors
    y = 0.1 + x @ np.array([0.5, -0.2, 0.0]) + e
    ours = ols_hac(y, x, ["a", "b", "c"], lags=5)
    ref = sm.OLS(y, sm.add_constant(x)).fit(cov_type="HAC", cov_kwds={"maxlags": 5})
    assert ours.names == ["const", "a", "b", "c"] and ours.nobs == 600
    assert np.allclose(ours.params, ref.params, rtol=0, atol=1e-12)
    assert np.allclose(ours.std_errors, ref.bse, rtol=1e-10, atol=0)
    assert np.allclose(ours.tvalues, ref.tvalues, rtol=1e-10, atol=0)
    assert ours.rsquared == pytest.approx(ref.rsquared, rel=1e-12)
    assert newey_west_lags(750) == 6 and newey_west_lags(100) == 4


def test_sharpe_standard_error():
    """Without lags the SE is Mertens' (2002) formula; iid normal returns give Lo's; autocorrelation widens it."""
    rng = np.random.default_rng(2)
    r = pl.Series(rng.standard_t(4, 5000) * 0.01 + 0.0008)
    s = sharpe_inference(r, lags=0, periods=1)
    x = r.to_numpy()
    sr = x.mean() / x.std()
    skew = float(np.mean((x - x.mean()) ** 3) / x.std() ** 3)
    kurt = float(np.mean((x - x.mean()) ** 4) / x.std() ** 4)
    mertens = math.sqrt((1 + sr**2 / 2 - skew * sr + (kurt - 3) / 4 * sr**2) / len(x))
    assert s["se"] == pytest.approx(mertens, rel=1e-10)
    assert s["sharpe"] == pytest.approx(float(r.mean() / r.std()))
    normal = pl.Series(rng.normal(0.0005, 0.01, 20000))
    lo = sharpe_inference(normal, lags=0)
    assert lo["se"] == pytest.approx(lo["se_iid"], rel=0.05)
    ar = np.zeros(3000)
    shocks = rng.normal(0.0005, 0.01, 3000)
    for t in range(1, 3000):
        ar[t] = 0.5 * ar[t - 1] + shocks[t]
    sticky = sharpe_inference(pl.Series(ar))
    assert sticky["nw_lags"] == newey_west_lags(3000) and sticky["se"] > 1.4 * sticky["se_iid"]
    assert stats(pl.Series(ar))["sharpe_se"] == sticky["se"]


def test_ic_by_horizon_equals_one_series_per_target():
    """The one-pass IC of every horizon equals ic_series target by target, nulls differing per target."""
    rng = np.random.default_rng(4)
    n_dates, n_names = 30, 40
    df = pl.DataFrame(
        {
            "date": [date(2024, 2, 1) + timedelta(days=i) for i in range(n_dates) for _ in range(n_names)],
            "permno": list(range(n_names)) * n_dates,
            "signal": rng.normal(size=n_dates * n_names),
            "fwd_1": rng.normal(size=n_dates * n_names),
            "fwd_5": rng.normal(size=n_dates * n_names),
        }
    ).with_columns(
        pl.when(pl.col("permno") < 3).then(None).otherwise(pl.col("fwd_5")).alias("fwd_5"),
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("signal")).alias("signal"),
    )
    both = ic_by_horizon(df, "signal", [1, 5])
    for h in (1, 5):
        assert both[h].equals(ic_series(df, "signal", f"fwd_{h}"))
        assert both[h]["horizon"].to_list() == [h] * n_dates
    decay = ic_decay(df, "signal", [1, 5])
    assert decay["t"].to_list() == [ic_summary(both[1])["t"], ic_summary(both[5])["t"]]
    assert decay["nw_lags"].to_list() == [0, 4]
    pearson = ic_by_horizon(df, "signal", [1, 5], method="pearson")
    assert pearson[5].equals(ic_series(df, "signal", "fwd_5", method="pearson"))


def test_quantile_spread_matches_statsmodels():
    """Top-minus-bottom spread per date: its mean is the quantile table's difference, its t the HAC one."""
    import statsmodels.api as sm

    rng = np.random.default_rng(8)
    dates = [date(2023, 1, 1) + timedelta(days=i) for i in range(200)]
    df = pl.DataFrame({"date": [d for d in dates for _ in range(25)], "signal": rng.normal(size=5000)})
    df = df.with_columns((0.01 * pl.col("signal") + pl.Series(rng.normal(0, 0.05, 5000))).alias("fwd_5"))
    spread = quantile_spread(df, "signal", "fwd_5")
    table = quantile_returns(df, "signal", "fwd_5")
    assert spread["mean"] == pytest.approx(table["mean"][-1] - table["mean"][0], rel=1e-12)
    q = df.with_columns(((pl.col("signal").rank("ordinal").over("date") - 1) * 5 // 25 + 1).alias("q"))
    per_date = q.group_by("date", "q").agg(pl.col("fwd_5").mean()).pivot(on="q", index="date", values="fwd_5")
    series = per_date.sort("date").select(pl.col("5") - pl.col("1")).to_series().to_numpy()
    ref = sm.OLS(series, np.ones(len(series))).fit(cov_type="HAC", cov_kwds={"maxlags": 4})
    assert spread["nw_lags"] == 4 and spread["n"] == 200
    assert abs(spread["t"] - float(ref.tvalues[0])) < 1e-8


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


def test_lag_equals_shift_over_permno_on_a_sorted_panel():
    """lag(col, n) is shift(n).over("permno") on a panel sorted by permno, date: never another name's value."""
    panel = pl.DataFrame({"permno": [1, 1, 1, 2, 2, 3], "date": D[:3] + D[:2] + D[:1], "x": [1.0, 2, 3, 4, 5, 6]})
    for n in (1, 2):
        ours = panel.select(lag("x", n))["x"]
        assert ours.to_list() == panel.select(pl.col("x").shift(n).over("permno"))["x"].to_list()
    assert panel.select(lag("x"))["x"].to_list() == [None, 1.0, 2.0, None, 4.0, None]


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


def test_pit_universe_sorts_by_permno_and_date_and_lags_within_a_name():
    """Shuffled input comes out sorted by permno, date; the price lag never crosses from one name to the next."""
    rows = [(p, d) for p in (30, 7, 12) for d in D[:5]]
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    daily = pl.DataFrame(
        {
            "permno": [p for p, _ in shuffled],
            "date": [d for _, d in shuffled],
            "prc": [float(p + D.index(d)) for p, d in shuffled],
            "ret": [0.01] * len(rows),
            "shrout": [100] * len(rows),
            "shrcd": [10] * len(rows),
            "exchcd": [1] * len(rows),
        }
    )
    delist = pl.DataFrame({"permno": [12], "dlstdt": [D[4]], "dlstcd": [231], "dlret": [0.1]})
    uni = pit_universe(daily, delist).collect()
    assert list(zip(uni["permno"], uni["date"], strict=True)) == [(p, d) for p in (7, 12, 30) for d in D[1:5]]
    assert uni["prc_lag"].to_list() == [float(p + i) for p in (7, 12, 30) for i in range(4)]
    assert uni.filter(pl.col("dlret").is_not_null())["ret_total"].to_list() == pytest.approx([1.01 * 1.1 - 1])


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
