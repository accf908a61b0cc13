"""Benchmark: JupyterLab's setting registry, nbl-fast-settings' walk against JupyterLab's own validator, side by side.

    python bench/lab_settings_ab.py [--rounds 10] [--user alice] [--pool-boot]     (after scripts/start.sh)

One Chromium browser, logged in to the console as ``--user``; per load a new session (launched through the service,
claimed from the pool) opened through the real open flow. Loads alternate between two arms that run the same plugin
(docker/notebook/lab/labextensions/nbl-fast-settings/, served to the page from this checkout) and differ only in its
validator: "walk" as shipped, "ajv" with the walk switched off, so every plugin goes to JupyterLab's own validator.
With ``--pool-boot`` the two arms are instead "boot" and "none": the walk in both, and in "boot" a bare Jupyter server
of the notebook image (a pool container's boot, at the pool's CPU weight) starting just before the page opens, to see
whether the pool's refill after a claim slows the claimed session's first load. In this mode each load waits for the
product's own refill to finish before the page opens, so "none" has no boot during the load and "boot" has one.

The first load (the browser's cold one) is not counted. Per arm it prints medians of: page open to the file browser
listing its files; the renderer processes' CPU-seconds over that time (/proc); the page's main-thread task time
(CDP ``Performance.getMetrics`` TaskDuration). Writes bench/results/lab_settings_ab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jupyterlab_load import RULES, _pool_full, log_in, renderer_cpu_s  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from launcher.bootstrap import build_service  # noqa: E402
from launcher.models import Actor, Role, SessionStatus  # noqa: E402
from launcher.settings import Settings  # noqa: E402

LAB = Path(__file__).resolve().parent.parent / "docker" / "notebook" / "lab"
ENTRY = LAB / "labextensions" / "nbl-fast-settings" / "static" / "remoteEntry.js"
WALK_ON = "var composite = this.composite(plugin);"
RESULTS = Path(__file__).resolve().parent / "results" / "lab_settings_ab.json"


def start_pool_boot(settings: Settings) -> Any:
    """A bare Jupyter server of the notebook image, booting at the pool's CPU weight (tests.helpers)."""
    import docker

    from tests.helpers import start_bare_server
    from workers.pool import POOL_CPU_SHARES

    folder = Path(tempfile.mkdtemp(prefix="nbl-bench-boot-", dir="/tmp"))
    container, _ = start_bare_server(docker.from_env(), settings.notebook_image, folder, label="lab-settings-ab")
    container.update(cpu_shares=POOL_CPU_SHARES)
    return container


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10, help="loads per arm")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--pool-boot", action="store_true", help="compare a pool boot during the load with none")
    args = parser.parse_args()
    settings = Settings.of_checkout()
    service = build_service(settings)
    actor = Actor(name=args.user, role=Role.RESEARCHER)
    walk = ENTRY.read_text()
    ajv = walk.replace(WALK_ON, "var composite = undefined;")
    if ajv == walk:
        raise SystemExit(f"{ENTRY} no longer has {WALK_ON!r}: update this benchmark")
    arms = ("none", "boot") if args.pool_boot else ("ajv", "walk")
    arm = {"now": arms[1]}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", f"--host-resolver-rules={RULES}"]
        )
        context = browser.new_context()

        def serve(route: Any) -> None:
            route.fulfill(body=ajv if arm["now"] == "ajv" else walk, content_type="application/javascript")

        context.route("**/lab/extensions/nbl-fast-settings/static/remoteEntry.js*", serve)
        log_in(context, settings, args.user)
        for i in range(2 * args.rounds + 1):
            arm["now"] = arms[i % 2]
            _pool_full(service, settings)
            session = service.launch(actor, "alpha_research")
            session = service.wait(actor, session.id, {SessionStatus.RUNNING}, 120, poll=0.01)
            if session.status != SessionStatus.RUNNING:
                raise SystemExit(f"launch failed: {session.error}")
            if args.pool_boot:
                _pool_full(service, settings)  # the product's own refill done: "none" has no boot during the load
            booting = start_pool_boot(settings) if arm["now"] == "boot" else None
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            cpu0, t0 = renderer_cpu_s(), time.monotonic()
            page.goto(f"{session.url.rstrip('/')}/_nbl/start")
            page.wait_for_selector(".jp-DirListing-content .jp-DirListing-item", timeout=60_000)
            took, cpu = time.monotonic() - t0, renderer_cpu_s() - cpu0
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            page.close()
            if booting is not None:
                booting.remove(force=True)
            service.stop(actor, session_id=session.id)
            service.wait(actor, session.id, {SessionStatus.STOPPED}, 60)
            if i == 0:
                continue  # the browser's first (cold) load
            row = {"open_s": took, "renderer_cpu_s": cpu, "main_thread_task_s": float(metrics["TaskDuration"])}
            rows[arm["now"]].append(row)
            task = row["main_thread_task_s"]
            print(f"{arm['now']:>4}: {took:.3f} s, renderer {cpu:.2f} CPU-s, main thread {task:.3f} s")
        browser.close()
    report: dict[str, Any] = {}
    for name, values in rows.items():
        medians = {key: round(statistics.median(r[key] for r in values), 3) for key in values[0]}
        report[name] = medians | {"n": len(values)}
        print(
            f"{name:>4}: open to file browser p50 {medians['open_s']:.3f} s, renderer {medians['renderer_cpu_s']:.2f}"
            f" CPU-s, main-thread tasks {medians['main_thread_task_s']:.3f} s, n={len(values)}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
