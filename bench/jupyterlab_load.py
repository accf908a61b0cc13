"""Benchmark: from a launch to JupyterLab usable in a real browser, through the running product.

    python bench/jupyterlab_load.py [--rounds 3] [--user alice]     (after scripts/start.sh)

Logs in to the console in Debian's Chromium as ``--user`` (password from var/initial-passwords), then per round:
launches a session for that user through the service (the click on Launch), waits until it runs, opens it
through the real open flow (the click on Open) and waits for JupyterLab's file browser with its files listed.
Each round is a new browser with a new profile on disk, as a researcher's browser has: Chromium keeps compiled
JavaScript in the profile's code cache, which a private (incognito) context does not have (``--private`` measures
that way, as this benchmark did before). Cases, each timed from the launch and with the bytes that crossed the wire
(CDP ``encodedDataLength``):

    cold browser       a new browser profile (nothing cached) opening its first session
    warm browser       the same browser opening a new session (another launch: other origin, same image)
    reload             the same session loaded again in that browser
    third session      the same browser opening a third session
    returning browser  the same browser opening a fourth session: by now Chromium uses the compiled code it cached
                       for JupyterLab's scripts (measured here from the fourth load; not at all in a private context)

Each round stops the session and lets the pool refill before the next launch (a person's pace). Prints
percentiles per case, with the CPU-seconds Chromium's renderers used during the load (the browser shares this
machine's cores with the product), and writes bench/results/jupyterlab_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
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


def renderer_cpu_s() -> float:
    """CPU-seconds used so far by Chromium's renderer processes."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"--type=renderer" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _pool_full(service: Any, settings: Settings, timeout: float = 120) -> None:
    want = sum(settings.pool_sizes.values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = [r for r in service.store.pool_slots(settings.host_name).values() if r.get("state") == "idle"]
        if len(idle) >= want:
            return
        time.sleep(0.2)


def _open(context: Any, url: str) -> tuple[float, float, int]:
    """Open ``url`` in a new tab until the file browser lists files: (seconds, the renderers' CPU-seconds, bytes on
    the wire)."""
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    sizes: dict[str, int] = {}
    cdp.on("Network.loadingFinished", lambda e: sizes.__setitem__(e["requestId"], e["encodedDataLength"]))
    cpu0, t0 = renderer_cpu_s(), time.monotonic()
    page.goto(url)
    page.wait_for_selector(".jp-DirListing-content .jp-DirListing-item", timeout=60_000)
    took, cpu = time.monotonic() - t0, renderer_cpu_s() - cpu0
    page.close()
    return took, cpu, sum(sizes.values())


def _launch_and_open(service: Any, actor: Actor, context: Any) -> tuple[float, float, float, int, str]:
    """(launch to running, launch to file browser, renderer CPU-seconds, bytes) for one new session, and its id."""
    t0 = time.monotonic()
    session = service.launch(actor, "alpha_research")
    session = service.wait(actor, session.id, {SessionStatus.RUNNING}, 120, poll=0.01)
    if session.status != SessionStatus.RUNNING:
        raise SystemExit(f"launch failed: {session.error}")
    running = time.monotonic() - t0
    opened, cpu, wire = _open(context, f"{session.url.rstrip('/')}/_nbl/start")
    return running, running + opened, cpu, wire, session.id


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--user", default="alice")
    parser.add_argument(
        "--private", action="store_true", help="private browser contexts (no code cache), as this benchmark used before"
    )
    args = parser.parse_args()
    settings = Settings.of_checkout()
    service = build_service(settings)
    actor = Actor(name=args.user, role=Role.RESEARCHER)
    names = ("cold browser", "warm browser", "reload", "third session", "returning browser")
    cases: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    chromium = {"executable_path": "/usr/bin/chromium", "headless": True}
    chromium["args"] = ["--no-sandbox", f"--host-resolver-rules={RULES}"]
    with sync_playwright() as p:
        for _ in range(args.rounds):
            profile = tempfile.mkdtemp(prefix="nbl-jlab-profile-")  # a new profile on disk: nothing cached
            browser = p.chromium.launch(**chromium) if args.private else None
            context = browser.new_context() if browser else p.chromium.launch_persistent_context(profile, **chromium)
            log_in(context, settings, args.user)
            for case in ("cold browser", "warm browser", "third session", "returning browser"):
                _pool_full(service, settings)
                running, usable, cpu, wire, sid = _launch_and_open(service, actor, context)
                cases[case].append({"running_s": running, "usable_s": usable, "cpu_s": cpu, "mb": wire / 1e6})
                if case == "warm browser":
                    session = service.get(actor, sid)
                    took, cpu, wire = _open(context, f"{session.url.rstrip('/')}/_nbl/start")
                    cases["reload"].append({"running_s": 0.0, "usable_s": took, "cpu_s": cpu, "mb": wire / 1e6})
                service.stop(actor, session_id=sid)
                service.wait(actor, sid, {SessionStatus.STOPPED}, 60)
            context.close()
            if browser:
                browser.close()
            shutil.rmtree(profile, ignore_errors=True)
    report: dict[str, dict[str, float]] = {}
    for case, rows in cases.items():
        usable = [r["usable_s"] for r in rows]
        mb = [r["mb"] for r in rows]
        report[case] = {
            "n": len(rows),
            "usable_p50_s": round(statistics.median(usable), 3),
            "usable_max_s": round(max(usable), 3),
            "running_p50_s": round(statistics.median(r["running_s"] for r in rows), 3),
            "renderer_cpu_p50_s": round(statistics.median(r["cpu_s"] for r in rows), 2),
            "mb_p50": round(statistics.median(mb), 3),
            "mb_max": round(max(mb), 3),
        }
        print(
            f"{case:>17}: launch to file browser p50 {report[case]['usable_p50_s']:.2f} s "
            f"(max {report[case]['usable_max_s']:.2f}; running after {report[case]['running_p50_s']:.2f} s; "
            f"renderer {report[case]['renderer_cpu_p50_s']:.2f} CPU-s), "
            f"{report[case]['mb_p50']:.3f} MB on the wire (max {report[case]['mb_max']:.3f}), n={len(rows)}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    browser_kind = "private" if args.private else "profile on disk"
    RESULTS.write_text(
        json.dumps({"pool_sizes": settings.pool_sizes, "browser": browser_kind, "cases": report}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
