"""Benchmark: from a launch to JupyterLab usable in a real browser, through the running product.

    python bench/jupyterlab_load.py [--rounds 3] [--user alice]     (after scripts/start.sh)

Logs in to the console in Debian's Chromium as ``--user`` (password from var/initial-passwords), then per round:
launches a session for that user through the service (the click on Launch), waits until it runs, opens it
through the real open flow (the click on Open) and waits for JupyterLab's file browser with its files listed.
Three cases, each timed from the launch and with the bytes that crossed the wire (CDP ``encodedDataLength``):

    cold browser   a new browser profile (nothing cached) opening its first session
    warm browser   the same browser opening a new session (another launch: other origin, same image)
    reload         the same session loaded again in that browser
    third session  the same browser opening a third session: by now Chromium has compiled code cached for
                   JupyterLab's scripts (it makes that cache on a script's second run, and uses it from the third)

Each round stops the session and lets the pool refill before the next launch (a person's pace). Prints
percentiles per case and writes bench/results/jupyterlab_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright  # noqa: E402

from launcher.bootstrap import build_service  # noqa: E402
from launcher.models import Actor, Role, SessionStatus  # noqa: E402
from launcher.settings import Settings  # noqa: E402

RULES = "MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
RESULTS = Path(__file__).resolve().parent / "results" / "jupyterlab_load.json"


def _password(user: str) -> str:
    lines = Path("var/initial-passwords").read_text().splitlines()
    return next(line.split()[2] for line in lines if line.startswith(f"{user} "))


def log_in(context: Any, settings: Settings, user: str) -> None:
    """Log ``user`` in to the console in this browser context (its password from var/initial-passwords)."""
    login = context.new_page()
    login.goto(f"{settings.console_url}/login")
    login.fill("#username", user)
    login.fill("#password", _password(user))
    login.click("button[type=submit]")
    login.wait_for_timeout(1500)


def _pool_full(service: Any, settings: Settings, timeout: float = 120) -> None:
    want = sum(settings.pool_sizes.values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = [r for r in service.store.pool_slots(settings.host_name).values() if r.get("state") == "idle"]
        if len(idle) >= want:
            return
        time.sleep(0.2)


def _open(context: Any, url: str) -> tuple[float, int, int]:
    """Open ``url`` in a new tab until the file browser lists files: (seconds, responses, bytes on the wire)."""
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    sizes: dict[str, int] = {}
    cdp.on("Network.loadingFinished", lambda e: sizes.__setitem__(e["requestId"], e["encodedDataLength"]))
    t0 = time.monotonic()
    page.goto(url)
    page.wait_for_selector(".jp-DirListing-content .jp-DirListing-item", timeout=60_000)
    took = time.monotonic() - t0
    page.close()
    return took, len(sizes), sum(sizes.values())


def _launch_and_open(service: Any, actor: Actor, context: Any) -> tuple[float, float, int, str]:
    """(launch to running, launch to file browser, bytes) for one new session, and its id."""
    t0 = time.monotonic()
    session = service.launch(actor, "alpha_research")
    session = service.wait(actor, session.id, {SessionStatus.RUNNING}, 120, poll=0.01)
    if session.status != SessionStatus.RUNNING:
        raise SystemExit(f"launch failed: {session.error}")
    running = time.monotonic() - t0
    opened, _, wire = _open(context, f"{session.url.rstrip('/')}/_nbl/start")
    return running, running + opened, wire, session.id


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--user", default="alice")
    args = parser.parse_args()
    settings = Settings.of_checkout()
    service = build_service(settings)
    actor = Actor(name=args.user, role=Role.RESEARCHER)
    names = ("cold browser", "warm browser", "reload", "third session")
    cases: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", f"--host-resolver-rules={RULES}"]
        )
        for _ in range(args.rounds):
            context = browser.new_context()  # a new profile: nothing cached
            log_in(context, settings, args.user)
            for case in ("cold browser", "warm browser", "third session"):
                _pool_full(service, settings)
                running, usable, wire, sid = _launch_and_open(service, actor, context)
                cases[case].append({"running_s": running, "usable_s": usable, "mb": wire / 1e6})
                if case == "warm browser":
                    session = service.get(actor, sid)
                    took, _, wire = _open(context, f"{session.url.rstrip('/')}/_nbl/start")
                    cases["reload"].append({"running_s": 0.0, "usable_s": took, "mb": wire / 1e6})
                service.stop(actor, session_id=sid)
                service.wait(actor, sid, {SessionStatus.STOPPED}, 60)
            context.close()
        browser.close()
    report: dict[str, dict[str, float]] = {}
    for case, rows in cases.items():
        usable = [r["usable_s"] for r in rows]
        mb = [r["mb"] for r in rows]
        report[case] = {
            "n": len(rows),
            "usable_p50_s": round(statistics.median(usable), 3),
            "usable_max_s": round(max(usable), 3),
            "running_p50_s": round(statistics.median(r["running_s"] for r in rows), 3),
            "mb_p50": round(statistics.median(mb), 3),
            "mb_max": round(max(mb), 3),
        }
        print(
            f"{case:>13}: launch to file browser p50 {report[case]['usable_p50_s']:.2f} s "
            f"(max {report[case]['usable_max_s']:.2f}; running after {report[case]['running_p50_s']:.2f} s), "
            f"{report[case]['mb_p50']:.3f} MB on the wire (max {report[case]['mb_max']:.3f}), n={len(rows)}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"pool_sizes": settings.pool_sizes, "cases": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
