"""Benchmark: what a browser downloads to show JupyterLab, through the running product.

    python bench/jupyterlab_load.py <session id>     (after scripts/start.sh and `launcher start --user alice ...`)

Logs in to the console as alice (password from var/initial-passwords), opens the session through the
real open flow in Debian's Chromium, waits for JupyterLab's file browser, and prints the time and the
bytes on the wire (CDP encodedDataLength), for a first load and a repeat load in the same browser.
"""

import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

RULES = "MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def main() -> None:
    sid = sys.argv[1]
    lines = Path("var/initial-passwords").read_text().splitlines()
    password = next(line.split()[2] for line in lines if line.startswith("alice "))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", f"--host-resolver-rules={RULES}"]
        )
        context = browser.new_context()
        page = context.new_page()
        page.goto("http://127.0.0.1:8501/login")
        page.fill("#username", "alice")
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_timeout(1500)
        for run in ("first", "repeat"):
            lab = context.new_page()
            cdp = context.new_cdp_session(lab)
            cdp.send("Network.enable")
            sizes: dict[str, int] = {}
            cdp.on(
                "Network.loadingFinished",
                lambda e, sizes=sizes: sizes.__setitem__(e["requestId"], e["encodedDataLength"]),
            )
            t0 = time.monotonic()
            lab.goto(f"http://{sid}.nb.localhost:8080/_nbl/start")
            lab.wait_for_selector(".jp-DirListing-content", timeout=60000)
            took = time.monotonic() - t0
            print(
                f"{run}: {took:.2f} s to the file browser, {len(sizes)} responses, {sum(sizes.values()) / 1e6:.2f} MB"
            )
            lab.close()
        browser.close()


if __name__ == "__main__":
    main()
