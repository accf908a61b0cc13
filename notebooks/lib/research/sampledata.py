"""Synthetic data in CRSP / Compustat / Fama-French shapes, in the layout of a real /data.

    python -m research.sampledata --preset ci|default --out DIR [--seed N] [--signal-strength S]

Deterministic for a seed. What it plants, so research mistakes show:

- **Earnings signal (known strength).** Each quarter every firm has a standardised earnings surprise
  ``sue`` ~ N(0, 1), visible in Compustat ``epspxq`` (this quarter's EPS minus the same quarter last
  year is ``sue`` times the firm's EPS volatility). It moves the stock only once the report is public:
  a jump on the report date ``rdq`` (``ANNOUNCEMENT_JUMP * sue``) and a drift over the next
  ``DRIFT_DAYS`` trading days adding up to ``signal_strength * sue``. Keyed on ``rdq`` a strategy earns
  the drift; keyed on ``datadate`` (weeks before ``rdq``) it also "earns" the jump: look-ahead.
- **Delistings.** Performance delistings (5xx) follow a slide in price, and some lack ``dlret``
  (the -30 % convention applies); dropping delisted names (survivors only) inflates returns.
- **Splits** (``cfacpr``/``cfacshr`` equal 1 at the last date, so adjusting historical prices with
  them uses future splits), **dividends** (``ret`` > ``retx`` on ex-dates), **no-trade days** (``prc``
  negative: a bid/ask midpoint; ``vol`` 0), **volatility regimes** and fat-tailed returns.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

VERSION = "1.0.0"
PRESETS = {"ci": {"stocks": 400, "years": 3}, "default": {"stocks": 3000, "years": 5}}
ANNOUNCEMENT_JUMP = 0.02
DRIFT_DAYS = 60
RF_DAILY = 0.00012


def _business_days(start: date, end: date) -> np.ndarray:
    days = np.arange(np.datetime64(start), np.datetime64(end) + 1, dtype="datetime64[D]")
    return days[np.is_busday(days)]


def generate(
    out: Path, *, stocks: int, years: int, seed: int = 7, end_year: int = 2024, signal_strength: float = 0.01
) -> dict:
    rng = np.random.default_rng(seed)
    out = Path(out)
    days = _business_days(date(end_year - years + 1, 1, 1), date(end_year, 12, 31))
    T, N = len(days), stocks
    permno = np.arange(10001, 10001 + N, dtype=np.int32)

    # -- who is listed when ------------------------------------------------------------------------
    list_day = np.where(rng.random(N) < 0.8, 0, rng.integers(0, int(T * 0.6), N))
    delists = rng.random(N) < 0.15
    delist_day = np.where(delists, np.minimum(list_day + rng.integers(120, T, N), T - 1), T - 1)
    delists &= delist_day < T - 1
    kind = rng.choice(["merger", "exchange", "performance"], size=N, p=[0.45, 0.10, 0.45])
    dlstcd = np.select([kind == "merger", kind == "exchange"], [231, 331], default=rng.choice([551, 552, 560, 580], N))
    dlret = np.select(
        [kind == "merger", kind == "exchange"],
        [rng.normal(0.15, 0.08, N), rng.normal(0.0, 0.03, N)],
        default=rng.normal(-0.35, 0.15, N),
    )
    dlret_missing = (kind == "performance") & (rng.random(N) < 0.4)

    # -- firm characteristics ----------------------------------------------------------------------
    exchcd = rng.choice(np.array([3, 1, 2], dtype=np.int8), size=N, p=[0.65, 0.25, 0.10])
    log_me = rng.normal(np.where(exchcd == 1, 14.0, 12.3), 1.4)  # $ thousands
    small = log_me < np.median(log_me)
    beta = rng.normal(1.0, 0.3, N)
    s_smb = np.where(small, rng.normal(0.8, 0.3, N), rng.normal(-0.2, 0.2, N))
    h_hml = rng.normal(0.0, 0.5, N)
    idio = np.clip(np.exp(rng.normal(np.where(small, np.log(0.030), np.log(0.013)), 0.25)), 0.008, 0.06)
    shrcd = rng.choice(np.array([11, 10, 12, 31], dtype=np.int8), size=N, p=[0.80, 0.15, 0.03, 0.02])
    siccd = rng.choice(np.array([1311, 2834, 3571, 3674, 4911, 5311, 6021, 6798, 7372, 8062], dtype=np.int16), N)

    # -- factors with volatility regimes -----------------------------------------------------------
    high = np.zeros(T, dtype=bool)
    for t in range(1, T):
        high[t] = rng.random() < (0.97 if high[t - 1] else 0.01)
    mkt_sd = np.where(high, 0.019, 0.008)
    mkt = 0.0004 + mkt_sd * rng.standard_t(5, T) / np.sqrt(5 / 3)
    smb = rng.normal(0.0001, 0.005, T)
    hml = rng.normal(0.0001, 0.005, T)
    umd = rng.normal(0.0002, 0.007, T)
    rmw = rng.normal(0.0001, 0.003, T)
    cma = rng.normal(0.0001, 0.003, T)

    # -- earnings: quarterly surprises, report dates, the planted drift ---------------------------
    quarters = [
        np.datetime64(date(y, m, 1)) - np.timedelta64(1, "D")
        for y in range(end_year - years, end_year + 1)
        for m in (1, 4, 7, 10)
    ]
    quarters = [q for q in quarters if q < days[-1]]
    Q = len(quarters)
    sue = rng.normal(0.0, 1.0, (Q, N))
    lag = rng.integers(20, 91, (Q, N))
    rdq = np.array(quarters, dtype="datetime64[D]")[:, None] + lag.astype("timedelta64[D]")
    rdq_idx = np.searchsorted(days, rdq)  # first trading day on or after the report date
    effect = np.zeros((T + DRIFT_DAYS + 1, N))
    cols = np.broadcast_to(np.arange(N), (Q, N))
    ok = rdq_idx < T
    np.add.at(effect, (rdq_idx[ok], cols[ok]), ANNOUNCEMENT_JUMP * sue[ok])
    drift = np.zeros((T + DRIFT_DAYS + 2, N))
    np.add.at(drift, (np.minimum(rdq_idx[ok] + 1, T), cols[ok]), signal_strength * sue[ok] / DRIFT_DAYS)
    np.add.at(
        drift,
        (np.minimum(rdq_idx[ok] + 1 + DRIFT_DAYS, T + DRIFT_DAYS), cols[ok]),
        -signal_strength * sue[ok] / DRIFT_DAYS,
    )
    effect = effect[:T] + np.cumsum(drift, axis=0)[:T]

    # -- returns -----------------------------------------------------------------------------------
    eps = rng.standard_t(4, (T, N)) * idio / np.sqrt(2.0)
    r_rmw, c_cma = rng.normal(0.0, 0.3, N), rng.normal(0.0, 0.3, N)
    ret = (
        beta * mkt[:, None]
        + s_smb * smb[:, None]
        + h_hml * hml[:, None]
        + r_rmw * rmw[:, None]
        + c_cma * cma[:, None]
        + eps
        + effect
        + RF_DAILY
    )
    t_idx = np.arange(T)[:, None]
    sliding = (kind == "performance") & delists
    ret += np.where(sliding & (t_idx > delist_day - 120) & (t_idx <= delist_day), -0.004, 0.0)
    ret = np.maximum(ret, -0.95)
    payer = rng.random(N) < 0.4
    ex_date = payer & (((t_idx + permno % 63) % 63) == 0)
    div = np.where(ex_date, rng.uniform(0.003, 0.008, N), 0.0)
    retx = ret - div

    # -- prices, splits, shares, volume ------------------------------------------------------------
    shrout0 = np.exp(log_me) / 25.0
    splitter = rng.random(N) < 0.10
    split_day = np.where(splitter, rng.integers(60, T - 1, N), T + 1)
    split_day = np.where((split_day > list_day) & (split_day <= delist_day), split_day, T + 1)  # within its life
    price = 25.0 * np.exp(np.cumsum(np.log1p(retx), axis=0)) / np.where(t_idx >= split_day, 2.0, 1.0)
    shrout = np.where(t_idx >= split_day, 2 * shrout0, shrout0).round().astype(np.int64)
    cfac = np.where((split_day <= T) & (t_idx < split_day), 2.0, 1.0)  # 1 from the split on: 1 at the last date
    no_trade = rng.random((T, N)) < np.where(small, 0.02, 0.002)
    prc = np.where(no_trade, -price, price)
    vol = np.where(no_trade, 0, (rng.lognormal(0, 0.6, (T, N)) * shrout * 5).astype(np.int64))

    listed = (t_idx >= list_day) & (t_idx <= delist_day)
    ti, ni = np.nonzero(listed)
    daily = pl.DataFrame(
        {
            "permno": permno[ni],
            "date": days[ti],
            "prc": prc[ti, ni],
            "ret": ret[ti, ni],
            "retx": retx[ti, ni],
            "vol": vol[ti, ni],
            "shrout": shrout[ti, ni],
            "cfacpr": cfac[ti, ni],
            "cfacshr": cfac[ti, ni],
            "exchcd": exchcd[ni],
            "shrcd": shrcd[ni],
            "siccd": siccd[ni],
        }
    ).with_columns(pl.col("date").cast(pl.Date))
    crsp = out / "wrds" / "crsp"
    (crsp / "daily").mkdir(parents=True, exist_ok=True)
    for (year,), part in daily.group_by(pl.col("date").dt.year()):
        part.sort("date", "permno").write_parquet(crsp / "daily" / f"{year}.parquet", compression="zstd")

    as_date = lambda a: pl.Series(a).cast(pl.Date)  # noqa: E731
    pl.DataFrame(
        {
            "permno": permno,
            "namedt": as_date(days[list_day]),
            "nameendt": as_date(days[delist_day]),
            "ticker": [f"S{p % 10000:04d}" for p in permno],
            "comnam": [f"SYNTHETIC CO {p}" for p in permno],
            "shrcd": shrcd,
            "exchcd": exchcd,
            "siccd": siccd,
        }
    ).write_parquet(crsp / "dsenames.parquet")
    pl.DataFrame(
        {
            "permno": permno[delists],
            "dlstdt": as_date(days[delist_day[delists]]),
            "dlstcd": dlstcd[delists].astype(np.int16),
            "dlret": pl.Series(np.where(dlret_missing[delists], np.nan, dlret[delists])).fill_nan(None),
        }
    ).write_parquet(crsp / "dsedelist.parquet")
    pl.DataFrame({"date": days, "vwretd": mkt + RF_DAILY, "ewretd": ret.mean(axis=1)}).with_columns(
        pl.col("date").cast(pl.Date)
    ).write_parquet(crsp / "dsi.parquet")
    gvkey = [f"{100000 + i:06d}"[-6:] for i in range(N)]
    pl.DataFrame(
        {
            "gvkey": gvkey,
            "lpermno": permno,
            "linktype": rng.choice(["LC", "LU"], N, p=[0.8, 0.2]),
            "linkprim": rng.choice(["P", "C"], N, p=[0.9, 0.1]),
            "linkdt": as_date(days[list_day]),
            "linkenddt": as_date(days[delist_day]),
        }
    ).with_columns(  # an empty linkenddt means the link is still active
        pl.when(pl.Series(delists)).then(pl.col("linkenddt")).alias("linkenddt")
    ).write_parquet(crsp / "ccmxpf_lnkhist.parquet")

    # -- Compustat ---------------------------------------------------------------------------------
    eps_sd = np.exp(rng.normal(np.log(0.15), 0.3, N))
    eps = np.zeros((Q, N))
    base = rng.normal(0.5, 0.3, N)
    for q in range(Q):
        prior = eps[q - 4] if q >= 4 else base
        eps[q] = prior + 0.01 + sue[q] * eps_sd
    qd = np.array(quarters, dtype="datetime64[D]")
    qi, fi = np.nonzero((rdq_idx <= delist_day) & (np.searchsorted(days, qd)[:, None] >= list_day - 260))
    shares = shrout0[fi] / 1000.0
    fundq = pl.DataFrame(
        {
            "gvkey": np.array(gvkey)[fi],
            "datadate": qd[qi],
            "rdq": rdq[qi, fi],
            "fyearq": qd[qi].astype("datetime64[Y]").astype(int) + 1970,
            "fqtr": (qi % 4) + 1,
            "indfmt": "INDL",
            "datafmt": "STD",
            "popsrc": "D",
            "consol": "C",
            "epspxq": eps[qi, fi],
            "cshoq": shares,
            "niq": eps[qi, fi] * shares,
            "saleq": np.abs(eps[qi, fi]) * shares * rng.uniform(4, 12, len(fi)),
            "atq": np.exp(log_me[fi]) / 1000 * rng.uniform(0.6, 2.0, len(fi)),
            "ceqq": np.exp(log_me[fi]) / 1000 * rng.uniform(0.2, 0.9, len(fi)),
        }
    ).with_columns(pl.col("datadate").cast(pl.Date), pl.col("rdq").cast(pl.Date))
    dupes = fundq.sample(fraction=0.05, seed=seed).with_columns(pl.lit("SUMM_STD").alias("datafmt"))
    comp = out / "wrds" / "comp"
    comp.mkdir(parents=True, exist_ok=True)
    pl.concat([fundq, dupes]).sort("gvkey", "datadate").write_parquet(comp / "fundq.parquet")
    fundq.group_by("gvkey", "fyearq").agg(
        pl.col("datadate").max(),
        pl.col("niq").sum().alias("ni"),
        pl.col("saleq").sum().alias("sale"),
        pl.col("atq").last().alias("at"),
        pl.col("ceqq").last().alias("ceq"),
        pl.col("cshoq").last().alias("csho"),
        pl.col("epspxq").sum().alias("epspx"),
    ).rename({"fyearq": "fyear"}).with_columns(
        indfmt=pl.lit("INDL"), datafmt=pl.lit("STD"), popsrc=pl.lit("D"), consol=pl.lit("C")
    ).sort("gvkey", "fyear").write_parquet(comp / "funda.parquet")

    # -- Fama-French (decimals, as on WRDS) ----------------------------------------------------------
    ff = out / "wrds" / "ff"
    ff.mkdir(parents=True, exist_ok=True)
    ffd = pl.DataFrame(
        {"date": days, "mktrf": mkt, "smb": smb, "hml": hml, "rmw": rmw, "cma": cma, "umd": umd, "rf": RF_DAILY}
    ).with_columns(pl.col("date").cast(pl.Date))
    ffd.write_parquet(ff / "factors_daily.parquet")
    ffd.group_by(pl.col("date").dt.month_end()).agg(
        [
            ((pl.col(c) + pl.col("rf")).log1p().sum().exp() - 1 - ((pl.col("rf").log1p().sum().exp()) - 1)).alias(c)
            for c in ("mktrf", "smb", "hml", "rmw", "cma", "umd")
        ]
        + [(pl.col("rf").log1p().sum().exp() - 1).alias("rf")]
    ).sort("date").write_parquet(ff / "factors_monthly.parquet")

    runs = _sample_backtests(out, days, fundq, daily)
    manifest = {
        "synthetic": True,
        "generator": "research.sampledata",
        "version": VERSION,
        "seed": seed,
        "stocks": N,
        "years": years,
        "end_year": end_year,
        "planted_signal": {
            "name": "sue",
            "drift_strength": signal_strength,
            "drift_days": DRIFT_DAYS,
            "announcement_jump": ANNOUNCEMENT_JUMP,
            "note": "returns load on sue only from rdq on; keyed on datadate is look-ahead",
        },
        "rows": {"crsp_daily": daily.height, "fundq": fundq.height, "delistings": int(delists.sum())},
        "backtests": runs,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _sample_backtests(out: Path, days: np.ndarray, fundq: pl.DataFrame, daily: pl.DataFrame) -> list[str]:
    """Two monthly SUE long-short runs for the backtest review: point-in-time and look-ahead."""
    from research.alphas import SUE
    from research.backtest import backtest

    links = pl.read_parquet(out / "wrds" / "crsp" / "ccmxpf_lnkhist.parquet")
    rets = daily.select("date", "permno", pl.col("ret").alias("ret_total"))
    bench = pl.read_parquet(out / "wrds" / "crsp" / "dsi.parquet").select("date", pl.col("vwretd").alias("benchmark"))
    runs = []
    for name, key in (("sue_pit", "rdq"), ("sue_lookahead", "datadate")):
        signal = SUE(key).compute(fundq=fundq, links=links, panel=daily.select("date", "permno"))
        result = backtest(signal.select("date", "permno", "signal"), rets, frequency="monthly", cost_bps=10)
        folder = out / "analytics" / "backtests" / name
        folder.mkdir(parents=True, exist_ok=True)
        result.returns.join(bench, on="date", how="left").write_parquet(folder / "returns.parquet")
        result.weights.write_parquet(folder / "weights.parquet")
        result.trades.join(
            signal.select("date", "permno", "rdq", "datadate"), on=["date", "permno"], how="left"
        ).write_parquet(folder / "trades.parquet")
        (folder / "meta.json").write_text(
            json.dumps(
                {
                    "run": name,
                    "signal": f"SUE keyed on {key}",
                    "rebalance": "monthly",
                    "quantiles": 5,
                    "cost_bps": 10,
                    "synthetic": True,
                },
                indent=2,
            )
        )
        runs.append(name)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="ci")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--signal-strength", type=float, default=0.01)
    a = p.parse_args()
    print(json.dumps(generate(a.out, seed=a.seed, signal_strength=a.signal_strength, **PRESETS[a.preset])))


if __name__ == "__main__":
    main()
