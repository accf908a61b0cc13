# Title: Backtest review
# Description: Performance table, cumulative return against the benchmark, rolling Sharpe and beta, drawdowns, monthly returns, factor exposures, cost sensitivity and a point-in-time audit of the trades.
# Data: backtest runs under /data/analytics/backtests; Fama-French factors; Compustat report dates
# Tolerance: 1e-9

# %% [markdown]
# # Backtest review
#
# Reviews one run under `/data/analytics/backtests/<run>/` (`returns.parquet`: daily gross, cost, net,
# benchmark; `weights.parquet`; `trades.parquet` with each trade's signal report date; `meta.json`)
# and audits whether any trade used information before it was public.
#
# Outputs go to `output_dir` in your workspace.

# %% parameters
data_root = "/data"
output_dir = "/home/jovyan/work/output/backtest_review"
run = "sue_pit"
compare_run = "sue_lookahead"
start = "2022-01-01"
end = "2024-12-31"
seed = 7
fast = False

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from research import data_root as root_of
from research import read_ff
from research.inference import ols_hac
from research.metrics import turnover
from research.performance import max_drawdown, sharpe_inference, stats
from research.plots import show

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
runs = root_of(data_root) / "analytics" / "backtests"
print("available runs:", sorted(p.name for p in runs.iterdir() if p.is_dir()))


def load(name: str) -> dict:
    folder = runs / name
    return {
        "meta": json.loads((folder / "meta.json").read_text()),
        "returns": pl.read_parquet(folder / "returns.parquet").sort("date"),
        "weights": pl.read_parquet(folder / "weights.parquet"),
        "trades": pl.read_parquet(folder / "trades.parquet"),
    }


bt = load(run)
print(bt["meta"])
r = bt["returns"]
results = {"run": run}

# %% [markdown]
# ## Performance
#
# A Sharpe ratio estimated from three years of daily returns is uncertain: `sharpe_se` is its standard
# error (annualised), by the delta method on the mean and variance with Newey-West weights (Lo 2002),
# which allows fat tails, skewness and autocorrelated returns. The iid-normal formula
# `sqrt((1 + SR^2 / 2) / n)` is shown for comparison.

# %%
table = pl.DataFrame(
    [
        {"series": "net", **stats(r["net"], r["benchmark"])},
        {"series": "gross", **stats(r["gross"], r["benchmark"])},
        {"series": "benchmark", **stats(r["benchmark"])},
    ]
)
with pl.Config(tbl_cols=-1, tbl_width_chars=160):
    print(table)
results["performance"] = table.to_dicts()
sr = sharpe_inference(r["net"])
results["sharpe_net"] = sr
print(
    f"net Sharpe {sr['sharpe']:.2f}, standard error {sr['se']:.2f} (Newey-West, {sr['nw_lags']} lags; "
    f"iid normal {sr['se_iid']:.2f}); 95 % interval {sr['sharpe'] - 1.96 * sr['se']:.2f} to "
    f"{sr['sharpe'] + 1.96 * sr['se']:.2f}; t = {sr['sharpe'] / sr['se']:.1f}"
)
fig, ax = plt.subplots(figsize=(9, 3))
for col in ("net", "gross", "benchmark"):
    ax.plot(r["date"], (1 + r[col]).cum_prod(), label=col)
ax.legend()
ax.set_title(f"{run}: cumulative return")
show(fig, out / "cumulative.png")

# %% [markdown]
# ## Rolling Sharpe and beta (126 days)

# %%
roll = r.select(
    "date",
    (pl.col("net").rolling_mean(126) / pl.col("net").rolling_std(126) * np.sqrt(252)).alias("sharpe"),
    (pl.rolling_cov("net", "benchmark", window_size=126) / pl.col("benchmark").rolling_var(126)).alias("beta"),
)
fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
axes[0].plot(roll["date"], roll["sharpe"])
axes[0].set_title("Rolling Sharpe")
axes[1].plot(roll["date"], roll["beta"])
axes[1].set_title("Rolling beta to the benchmark")
show(fig, out / "rolling.png")

# %% [markdown]
# ## Drawdowns

# %%
wealth = (1 + r["net"]).cum_prod()
under = wealth / wealth.cum_max() - 1
dd = pl.DataFrame({"date": r["date"], "drawdown": under})
episodes = (
    dd.with_columns((pl.col("drawdown") == 0).cum_sum().alias("episode"))
    .filter(pl.col("drawdown") < 0)
    .group_by("episode")
    .agg(
        pl.col("date").first().alias("start"),
        pl.col("date").last().alias("end"),
        pl.col("drawdown").min().alias("depth"),
        pl.len().alias("days"),
    )
    .sort("depth")
    .head(5)
)
print(episodes.drop("episode"))
fig, ax = plt.subplots(figsize=(9, 2.5))
ax.fill_between(dd["date"].to_numpy(), dd["drawdown"].to_numpy(), 0, color="tab:red", alpha=0.4)
ax.set_title("Drawdown (net)")
show(fig, out / "drawdown.png")
results["max_drawdown"] = max_drawdown(r["net"])

# %% [markdown]
# ## Monthly returns

# %%
monthly = r.group_by(pl.col("date").dt.year().alias("year"), pl.col("date").dt.month().alias("month")).agg(
    (pl.col("net").log1p().sum().exp() - 1).alias("ret")
)
grid = monthly.pivot(on="month", index="year", values="ret", sort_columns=True).sort("year")
print(grid.with_columns(pl.exclude("year").round(4)))

# %% [markdown]
# ## Factor exposures
#
# Daily net returns regressed on the Fama-French factors, with Newey-West (HAC) errors, 5 lags
# (`research.inference.ols_hac`, equal to statsmodels' `OLS(...).fit(cov_type="HAC")`).

# %%
ff = read_ff("daily", data_root)
joined = r.join(ff, on="date")
xs = [c for c in ("mktrf", "smb", "hml", "rmw", "cma", "umd") if c in joined.columns]
fit = ols_hac((joined["net"] - joined["rf"]).to_numpy(), joined.select(xs).to_numpy(), xs, lags=5)
exposures = pl.DataFrame(
    {
        "factor": ["alpha (ann.)", *xs],
        "estimate": [fit.params[0] * 252, *fit.params[1:]],
        "t": list(fit.tvalues),
    }
)
print(exposures)
results["exposures"] = exposures.to_dicts()

# %% [markdown]
# ## Cost sensitivity
#
# The same trades charged 0 to 50 bp per unit of turnover.

# %%
to = turnover(bt["weights"]).rename({"date": "rebalance"})
first_day = r.select("date").join_asof(
    to.sort("rebalance"), left_on="date", right_on="rebalance", strategy="backward", allow_exact_matches=False
)
first_day = first_day.filter(pl.col("rebalance") != pl.col("rebalance").shift(1)).select("date", "turnover")
rows = []
for bps in (0, 5, 10, 25, 50):
    cost = (
        r.select("date", "gross")
        .join(first_day, on="date", how="left")
        .with_columns((pl.col("gross") - pl.col("turnover").fill_null(0.0) * bps / 1e4).alias("net"))
    )
    rows.append({"cost_bps": bps, **{k: v for k, v in stats(cost["net"]).items() if k in ("cagr", "sharpe")}})
sens = pl.DataFrame(rows)
print(sens)
results["cost_sensitivity"] = sens.to_dicts()
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(sens["cost_bps"], sens["sharpe"], marker="o")
ax.set_title("Sharpe vs cost (bp per turnover)")
show(fig, out / "costs.png")

# %% [markdown]
# ## Point-in-time audit
#
# A trade may use a quarter's earnings only once they were reported: its signal's `rdq` must be on or
# before the trade's date. The audit counts trades that broke the rule, in this run and in the run it is
# compared with.


# %%
def audit(trades: pl.DataFrame) -> dict:
    known = trades.drop_nulls("rdq")
    early = known.filter(pl.col("rdq") > pl.col("date"))
    return {
        "trades": trades.height,
        "with_report_date": known.height,
        "before_report": early.height,
        "share_before_report": early.height / max(known.height, 1),
    }


results["audit"] = audit(bt["trades"])
print(run, results["audit"])
if compare_run:
    other = load(compare_run)
    results["audit_compare"] = {"run": compare_run, **audit(other["trades"])}
    other_stats = stats(other["returns"]["net"])
    results["compare_sharpe"] = other_stats["sharpe"]
    results["compare_sharpe_se"] = other_stats["sharpe_se"]
    print(compare_run, results["audit_compare"])
    print(f"{compare_run}: Sharpe {other_stats['sharpe']:.2f} (standard error {other_stats['sharpe_se']:.2f})")

# %%
(out / "results.json").write_text(json.dumps(results, indent=2, default=str))
print(f"results written to {out}")
