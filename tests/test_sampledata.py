"""The sample-data generator: deterministic for a seed, files in the documented layout and CRSP shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from launcher.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "notebooks" / "lib"))

from research.sampledata import generate  # noqa: E402

SCHEMAS = {
    "wrds/crsp/daily/2024.parquet": [
        "permno",
        "date",
        "prc",
        "ret",
        "retx",
        "vol",
        "shrout",
        "cfacpr",
        "cfacshr",
        "exchcd",
        "shrcd",
        "siccd",
    ],
    "wrds/crsp/dsenames.parquet": ["permno", "namedt", "nameendt", "ticker", "comnam", "shrcd", "exchcd", "siccd"],
    "wrds/crsp/dsedelist.parquet": ["permno", "dlstdt", "dlstcd", "dlret"],
    "wrds/crsp/dsi.parquet": ["date", "vwretd", "ewretd"],
    "wrds/crsp/ccmxpf_lnkhist.parquet": ["gvkey", "lpermno", "linktype", "linkprim", "linkdt", "linkenddt"],
    "wrds/comp/fundq.parquet": [
        "gvkey",
        "datadate",
        "rdq",
        "fyearq",
        "fqtr",
        "indfmt",
        "datafmt",
        "popsrc",
        "consol",
        "epspxq",
        "cshoq",
        "niq",
        "saleq",
        "atq",
        "ceqq",
    ],
    "wrds/comp/funda.parquet": ["gvkey", "fyear", "datadate", "ni", "sale", "at", "ceq", "csho", "epspx"],
    "wrds/ff/factors_daily.parquet": ["date", "mktrf", "smb", "hml", "rmw", "cma", "umd", "rf"],
    "wrds/ff/factors_monthly.parquet": ["date", "mktrf", "smb", "hml", "rmw", "cma", "umd", "rf"],
    "analytics/backtests/sue_pit/returns.parquet": ["date", "gross", "cost", "net", "long", "short", "benchmark"],
    "analytics/backtests/sue_pit/trades.parquet": ["date", "permno", "weight_change", "rdq", "datadate"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd")
    generate(out / "a", stocks=120, years=2, seed=11)
    generate(out / "b", stocks=120, years=2, seed=11)
    generate(out / "c", stocks=120, years=2, seed=12)
    return out


def test_deterministic_for_a_seed(data):
    """The same seed gives identical tables; another seed does not."""
    for rel in SCHEMAS:
        assert pl.read_parquet(data / "a" / rel).equals(pl.read_parquet(data / "b" / rel)), rel
    daily = "wrds/crsp/daily/2024.parquet"
    assert not pl.read_parquet(data / "a" / daily).equals(pl.read_parquet(data / "c" / daily))


def test_files_match_the_documented_schema(data):
    """Every documented file exists with its columns; MANIFEST marks the data synthetic."""
    for rel, columns in SCHEMAS.items():
        assert set(columns) <= set(pl.read_parquet(data / "a" / rel).columns), rel
    manifest = json.loads((data / "a" / "MANIFEST.json").read_text())
    assert manifest["synthetic"] is True and manifest["seed"] == 11 and manifest["version"]
    assert manifest["planted_signal"]["name"] == "sue"


def test_crsp_conventions(data):
    """Negative prc with zero volume on no-trade days; ret > retx on ex-dates; cfacpr 1 at the last date;
    missing 5xx dlret exist; rdq lags datadate by 20-90 days; gvkey is 6 characters; link ends are empty while active."""
    d = pl.concat([pl.read_parquet(p) for p in sorted((data / "a" / "wrds/crsp/daily").glob("*.parquet"))])
    no_trade = d.filter(pl.col("prc") < 0)
    assert no_trade.height > 0 and (no_trade["vol"] == 0).all()
    assert (d["ret"] > d["retx"]).any() and (d["ret"] >= d["retx"]).all()
    last = d.sort("date").group_by("permno").agg(pl.col("cfacpr").last())
    assert (last["cfacpr"] == 1.0).all() and (d["cfacpr"] == 2.0).any()
    delist = pl.read_parquet(data / "a" / "wrds/crsp/dsedelist.parquet")
    assert delist.filter((pl.col("dlstcd") >= 500) & pl.col("dlret").is_null()).height > 0
    fq = pl.read_parquet(data / "a" / "wrds/comp/fundq.parquet")
    lag = fq.select((pl.col("rdq") - pl.col("datadate")).dt.total_days())
    assert lag.min().item() >= 20 and lag.max().item() <= 90
    assert (fq["gvkey"].str.len_chars() == 6).all()
    assert (fq["datafmt"] != "STD").any()  # duplicates the standard filters must remove
    links = pl.read_parquet(data / "a" / "wrds/crsp/ccmxpf_lnkhist.parquet")
    assert links["linkenddt"].null_count() > 0


def test_templates_are_built_from_their_sources():
    """notebooks/templates/*.ipynb are what notebooks/build_templates.py makes of notebooks/src/*.py."""
    check = subprocess.run(
        [sys.executable, str(REPO_ROOT / "notebooks" / "build_templates.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_launch_keeps_the_users_edited_copy(unit_settings):
    """Copying a template into a workspace never overwrites a copy the user already has."""
    from workers.hostfs import copy_template, prepare_workspace

    ws = prepare_workspace(unit_settings, "keeper")
    first = copy_template(unit_settings, "alpha_research", ws)
    first.write_text("my edits")
    again = copy_template(unit_settings, "alpha_research", ws)
    assert again == first and first.read_text() == "my edits"


def test_template_copy_does_not_follow_a_planted_symlink(unit_settings, tmp_path):
    """A symlink planted where a template goes is left as is: its target (a file of this test, or a
    path that does not exist yet) is neither written, chowned, chmodded nor created."""
    from workers.hostfs import copy_template, prepare_workspace

    ws = prepare_workspace(unit_settings, "planter")
    victim = tmp_path / "victim.txt"
    victim.write_text("not the template\n")
    victim.chmod(0o600)
    before = victim.stat()
    link = ws / "backtest_review.ipynb"
    link.symlink_to(victim)
    missing = tmp_path / "created-through-the-link.ipynb"
    dangling = ws / "factor_analysis.ipynb"
    dangling.symlink_to(missing)

    assert copy_template(unit_settings, "backtest_review", ws) == link
    assert copy_template(unit_settings, "factor_analysis", ws) == dangling

    assert victim.read_text() == "not the template\n"
    after = victim.stat()
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_size) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
        before.st_size,
    )
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert dangling.is_symlink() and os.readlink(dangling) == str(missing)
    assert not missing.exists()
