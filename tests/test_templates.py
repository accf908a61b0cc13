"""Each template runs end to end inside the notebook image on the ci preset, and its results are right."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from tests.stack import TEMPLATES, make_sample_data, run_template

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def executed(workdir):
    """Run the three templates with papermill in the image: data read-only, network none, uid 1000."""
    from tests.conftest import docker_or_skip

    docker_or_skip()
    data, out = workdir / "tpl-data", workdir / "tpl-out"
    make_sample_data(data)
    out.mkdir()
    out.chmod(0o777)
    results = {}
    for name in TEMPLATES:
        run = run_template(name, data, out)
        assert run.returncode == 0, run.stderr[-3000:]
        results[name] = json.loads((out / name / "results.json").read_text())
    print(f"\nexecuted notebooks and figures: {out}")
    return results, out


def test_alpha_research_recovers_the_planted_signal_and_shows_the_pitfalls(executed):
    """SUE's rank IC is positive and significant; datadate inflates it; survivors-only inflates returns."""
    r, out = executed
    r = r["alpha_research"]
    assert r["rank_ic_rdq"]["mean"] > 0.01 and r["rank_ic_rdq"]["t"] > 3
    assert r["rank_ic_datadate"]["mean"] > 1.5 * r["rank_ic_rdq"]["mean"]
    assert r["backtest_datadate"]["sharpe"] > r["backtest_rdq"]["sharpe"] + 1.0
    assert r["backtest_rdq"]["sharpe"] > 0
    assert r["ew_annual_survivors"] > r["ew_annual_all"]
    assert r["split_leak_names"] > 0
    assert r["quintile_spread_20d"] > 0
    for fig in ("universe.png", "ic.png", "ic_decay.png", "quantiles.png", "lookahead.png"):
        assert (out / "alpha_research" / fig).stat().st_size > 5000


def test_alpha_research_t_statistics_are_newey_west(executed):
    """The IC t equals statsmodels' HAC t (maxlags 19) on the notebook's own IC series to 1e-8, well below naive."""
    import statsmodels.api as sm

    r, out = executed
    r = r["alpha_research"]
    ic = pl.read_parquet(out / "alpha_research" / "ic_rdq.parquet")["ic"].drop_nulls().to_numpy()
    ref = sm.OLS(ic, np.ones(len(ic))).fit(cov_type="HAC", cov_kwds={"maxlags": 19})
    summary = r["rank_ic_rdq"]
    assert summary["nw_lags"] == 19 and summary["n"] == len(ic)
    assert abs(summary["t"] - float(ref.tvalues[0])) < 1e-8
    assert summary["t_naive"] > 2 * summary["t"]  # the overlap inflates the naive t about sqrt(20) times
    by_h = {row["horizon"]: row for row in r["ic_decay"]}
    assert [by_h[h]["nw_lags"] for h in (1, 5, 20, 60)] == [0, 4, 19, 59]
    assert by_h[60]["t_naive"] > 3 * by_h[60]["t"]
    spread = r["quintile_spread_20d_test"]
    assert spread["mean"] == pytest.approx(r["quintile_spread_20d"], rel=1e-9) and spread["nw_lags"] == 19
    assert spread["t"] > 2 and spread["t_naive"] > 2 * spread["t"]
    # a Sharpe ratio from two years of daily returns is known to about +-0.7 (Lo 2002: sqrt(252 / n))
    bt = r["backtest_rdq"]
    assert 0.5 * math.sqrt(252 / 500) < bt["sharpe_se"] < 2 * math.sqrt(252 / 500)


def test_headless_runs_keep_their_charts(executed):
    """Executed by papermill (no browser), each template's notebook holds its figures as image/png outputs."""
    out = executed[1]
    expected = {"alpha_research": 5, "factor_analysis": 2, "backtest_review": 4}
    for name, count in expected.items():
        nb = json.loads((out / f"{name}.ipynb").read_text())
        images = [
            o
            for cell in nb["cells"]
            if cell["cell_type"] == "code"
            for o in cell["outputs"]
            if o["output_type"] == "display_data" and "image/png" in o.get("data", {})
        ]
        assert len(images) == count, name
        assert len(list((out / name).glob("*.png"))) == count


def test_factor_analysis_fama_macbeth_matches_linearmodels_on_real_data(executed):
    """Our Fama-MacBeth equals linearmodels' on the real Fama-French portfolios; all four models are fitted."""
    r = executed[0]["factor_analysis"]
    assert r["fm_real_max_abs_diff_estimate"] < 1e-10 and r["fm_real_max_abs_diff_se"] < 1e-10
    assert {row["model"] for row in r["ts_regressions"]} == {"CAPM", "FF3", "Carhart", "FF5"}
    assert all(0.3 < row["beta mkt"] < 2.0 for row in r["ts_regressions"])


def test_backtest_review_audits_point_in_time(executed):
    """The point-in-time run has no trade before its report date; the look-ahead run has many; costs bite."""
    r = executed[0]["backtest_review"]
    assert r["audit"]["before_report"] == 0 and r["audit"]["with_report_date"] > 100
    assert r["audit_compare"]["share_before_report"] > 0.3
    sharpes = [row["sharpe"] for row in r["cost_sensitivity"]]
    assert sharpes == sorted(sharpes, reverse=True)


def test_backtest_review_reports_standard_errors(executed):
    """The net Sharpe ratio comes with its Newey-West standard error; exposures come with HAC t-statistics."""
    r = executed[0]["backtest_review"]
    sr = r["sharpe_net"]
    net = next(row for row in r["performance"] if row["series"] == "net")
    assert sr["sharpe"] == pytest.approx(net["sharpe"]) and sr["se"] == pytest.approx(net["sharpe_se"])
    assert sr["nw_lags"] >= 1 and 0.3 < sr["se"] < 1.5 and 0.3 < sr["se_iid"] < 1.5
    assert r["compare_sharpe_se"] > 0
    assert [row["factor"] for row in r["exposures"]][0] == "alpha (ann.)"
    assert all(math.isfinite(row["t"]) for row in r["exposures"])
