"""Each template runs end to end inside the notebook image on the ci preset, and its results are right."""

from __future__ import annotations

import json

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
