# Title: Alpha research
# Description: Define an alpha, build the point-in-time universe, measure IC, its decay, quantile spreads and turnover, and see three classic mistakes side by side with the correct version.
# Data: CRSP daily, delistings, CCM links; Compustat quarterly (rdq); reads /data, writes to your workspace
# Tolerance: 1e-9

# %% [markdown]
# # Alpha research
#
# A worked example on the data at `/data`: the **SUE** alpha (standardised unexpected earnings,
# post-earnings-announcement drift). Replace the alpha with your own; the rest of the notebook measures
# it the same way. Everything is point in time: a value is used only from the day it was public.
#
# Outputs (figures, `results.json`) go to `output_dir` in your workspace; `/data` is read-only.

# %% parameters
data_root = "/data"
output_dir = "/home/jovyan/work/output/alpha_research"
start = "2022-01-01"
end = "2024-12-31"
seed = 7
fast = False

# %%
import json
from datetime import date
from pathlib import Path

import matplotlib.pyplot as plt
import polars as pl

from research import manifest, read_crsp_daily, read_table
from research.alphas import SUE
from research.backtest import backtest
from research.metrics import (
    forward_returns,
    ic_by_horizon,
    ic_series,
    ic_summary,
    quantile_returns,
    quantile_spread,
    rank_autocorrelation,
    turnover,
)
from research.performance import sharpe_inference, stats
from research.plots import show
from research.universe import pit_universe, survivors_only

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
start_d, end_d = date.fromisoformat(start), date.fromisoformat(end)
info = manifest(data_root)
print(
    "data:",
    "SYNTHETIC" if info.get("synthetic") else "real",
    {k: info.get(k) for k in ("version", "seed", "stocks", "years")},
)
results = {}

# %% [markdown]
# ## The point-in-time universe
#
# Common shares (`shrcd` 10/11) on NYSE, AMEX, NASDAQ, whose **previous** day's raw price was at least
# \$5, with delisting returns merged into the last day's return (missing performance delistings at
# -30 %). Names that later delist stay in until they do.
#
# The data is read lazily: selecting the columns you need before `collect()` reads only those.
# `show(fig, path)` saves a figure and shows it here.

# %%
daily = read_crsp_daily(start_d, end_d, data_root)
delist = read_table("dsedelist", data_root)
universe = pit_universe(daily, delist).select("date", "permno", "ret_total").collect()
per_day = universe.group_by("date").len().sort("date")
print(f"{universe.height:,} stock-days; {per_day['len'].median():.0f} names on a median day")
fig, ax = plt.subplots(figsize=(9, 3))
ax.plot(per_day["date"], per_day["len"])
ax.set_title("Names in the universe")
show(fig, out / "universe.png")

# %% [markdown]
# ## The alpha
#
# SUE for each firm-quarter, linked to CRSP through CCM, carried forward on trading days **from the
# report date `rdq`**, winsorised and z-scored across stocks each day.

# %%
fundq = read_table("fundq", data_root)
links = read_table("ccmxpf_lnkhist", data_root)
panel = universe.select("date", "permno")
signal = SUE("rdq").compute(fundq=fundq, links=links, panel=panel)
horizons = [1, 5, 20] if fast else [1, 5, 20, 60]
fwd = forward_returns(universe, horizons)
df = signal.join(fwd, on=["date", "permno"])
print(f"{df.height:,} stock-days with a signal")

# %% [markdown]
# ## Information coefficient
#
# Rank IC: the cross-sectional Spearman correlation between today's signal and the next 20 days' return,
# one number a day.
#
# **Its t-statistic.** Two consecutive days' 20-day windows share 19 days, so the daily ICs are strongly
# autocorrelated and are not that many independent observations. The naive `mean / sd * sqrt(n)` treats them
# as independent and overstates significance by roughly the square root of the horizon (alphalens makes
# the same mistake). `t` is the **Newey-West** t-statistic with `horizon - 1` = 19 lags, the one to
# report; `t_naive` is shown only to see how far off it is.

# %%
ics = ic_by_horizon(df, "signal", horizons)  # the daily rank IC against every horizon, in one pass
ic = ics[20]
summary = ic_summary(ic)  # horizon 20 (the fwd_20 column): Newey-West with 19 lags
pearson = ic_summary(ic_series(df, "signal", "fwd_20", method="pearson"))
print(f"rank IC {summary['mean']:.4f}  IC IR {summary['ir']:.2f}  days {summary['n']}")
print(f"  t = {summary['t']:.1f} (Newey-West, {summary['nw_lags']} lags: report this one)")
print(f"  t = {summary['t_naive']:.1f} (naive, days treated as independent: {summary['t_naive'] / summary['t']:.1f}x too high)")
print(f"IC (Pearson) {pearson['mean']:.4f}  t {pearson['t']:.1f} (Newey-West)")
results["rank_ic_rdq"] = summary
ic.write_parquet(out / "ic_rdq.parquet")
fig, ax = plt.subplots(figsize=(9, 3))
ax.plot(ic["date"], ic["ic"], lw=0.6, label="ic")
ax.plot(ic["date"], ic["ic"].rolling_mean(60), label="60-day mean")
ax.legend()
ax.set_title("Daily rank IC (signal vs next 20 days)")
show(fig, out / "ic.png")

# %% [markdown]
# IC decay: the mean IC against 1, 5, 20 and 60-day forward returns. The naive t grows with the horizon
# because the overlap grows with it, not because the evidence does; the Newey-West t (lags `h - 1`)
# does not reward the overlap.

# %%
decay = pl.DataFrame([{"horizon": h, **ic_summary(ics[h])} for h in horizons])
print(decay.select("horizon", "mean", "t", "t_naive", "nw_lags", "ir", "n"))
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar([str(h) for h in decay["horizon"]], decay["mean"])
ax.set_title("Rank IC by horizon (days)")
show(fig, out / "ic_decay.png")
results["ic_decay"] = decay.select("horizon", "mean", "t", "t_naive", "nw_lags").to_dicts()

# %% [markdown]
# ## Quantile spreads, turnover

# %%
quant = quantile_returns(df, "signal", "fwd_20")
print(quant)
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar([str(q) for q in quant["quantile"]], quant["mean"])
ax.set_title("Mean next-20-day return by quintile")
show(fig, out / "quantiles.png")
results["quintile_spread_20d"] = float(quant["mean"][-1] - quant["mean"][0])
spread = quantile_spread(df, "signal", "fwd_20")  # top minus bottom quintile, per day
results["quintile_spread_20d_test"] = spread
print(
    f"top minus bottom quintile, next 20 days: {spread['mean']:.2%}  "
    f"t {spread['t']:.1f} (Newey-West, {spread['nw_lags']} lags; naive {spread['t_naive']:.1f})"
)

bt = backtest(signal.select("date", "permno", "signal"), universe)
to = turnover(bt.weights)
print(f"monthly turnover (one side counts both legs): median {to['turnover'].median():.2f}")
print(
    f"rank autocorrelation, 20 trading days apart: {rank_autocorrelation(signal.filter(pl.col('date').is_in(pl.col('date').unique().sort().gather_every(20).implode())), 'signal'):.2f}"
)
results["backtest_rdq"] = stats(bt.returns["net"])
sr = sharpe_inference(bt.returns["net"])
print(
    f"long-short Sharpe {sr['sharpe']:.2f}, standard error {sr['se']:.2f} (Newey-West, {sr['nw_lags']} lags; "
    f"{sr['se_iid']:.2f} if returns were iid normal): about {sr['sharpe'] - 1.96 * sr['se']:.2f} to "
    f"{sr['sharpe'] + 1.96 * sr['se']:.2f} at 95 %"
)

# %% [markdown]
# ## Three mistakes, side by side with the correct version
#
# **1. Keyed on `datadate` instead of `rdq`.** The quarter ends on `datadate`; the numbers are public
# only on `rdq`, 20 to 90 days later. Using them from `datadate` trades on news before it exists.

# %%
look = SUE("datadate").compute(fundq=fundq, links=links, panel=panel)
look_df = look.join(fwd, on=["date", "permno"])
look_ic = ic_summary(ic_series(look_df, "signal", "fwd_20"))
look_bt = backtest(look.select("date", "permno", "signal"), universe)
results["rank_ic_datadate"] = look_ic
results["backtest_datadate"] = stats(look_bt.returns["net"])
rdq_bt, dd_bt = results["backtest_rdq"], results["backtest_datadate"]
cmp = pl.DataFrame(
    {
        "version": ["rdq (correct)", "datadate (look-ahead)"],
        "rank IC": [summary["mean"], look_ic["mean"]],
        "t (NW)": [summary["t"], look_ic["t"]],
        "Sharpe": [rdq_bt["sharpe"], dd_bt["sharpe"]],
        "Sharpe s.e.": [rdq_bt["sharpe_se"], dd_bt["sharpe_se"]],
        "CAGR": [rdq_bt["cagr"], dd_bt["cagr"]],
    }
)
print(cmp)
fig, ax = plt.subplots(figsize=(9, 3))
for name, res in (("rdq (correct)", bt), ("datadate (look-ahead)", look_bt)):
    ax.plot(res.returns["date"], (1 + res.returns["net"]).cum_prod(), label=name)
ax.legend()
ax.set_title("SUE long-short, net of costs")
show(fig, out / "lookahead.png")

# %% [markdown]
# **2. Survivors only.** Dropping every name that delisted during the sample removes the losers
# before they lose (performance delistings slide first, then delist at -30 % or worse).

# %%
surv = survivors_only(universe.lazy(), delist).collect()
ew_all = universe.group_by("date").agg(pl.col("ret_total").mean()).sort("date")
ew_surv = surv.group_by("date").agg(pl.col("ret_total").mean()).sort("date")
results["ew_annual_all"] = float(ew_all["ret_total"].mean() * 252)
results["ew_annual_survivors"] = float(ew_surv["ret_total"].mean() * 252)
print(
    f"equal-weighted annual return: all names {results['ew_annual_all']:.2%}, survivors only {results['ew_annual_survivors']:.2%}"
)

# %% [markdown]
# **3. Adjusted prices leak future splits.** `cfacpr` equals 1 at the last date of the data, so dividing
# an old price by it uses splits that had not happened yet: a "$5 filter" on adjusted prices drops
# stocks that were above \$5 at the time.

# %%
raw = daily.select(
    "permno", "date", pl.col("prc").abs().alias("raw"), (pl.col("prc").abs() / pl.col("cfacpr")).alias("adj")
).collect()
differs = raw.filter((pl.col("raw") >= 5) != (pl.col("adj") >= 5))
results["split_leak_stock_days"] = differs.height
results["split_leak_names"] = differs["permno"].n_unique()
print(
    f"{differs.height:,} stock-days in {differs['permno'].n_unique()} names change membership when the filter uses adjusted prices"
)

# %%
(out / "results.json").write_text(json.dumps(results, indent=2, default=float))
print(f"results written to {out}")
