"""JupyterLab's start in Chromium, in a real session (issue 12, "JupyterLab itself loads fast").

JupyterLab 4's application-state plugin holds the start until the workspace's first save, which it debounces by
500 ms (and every state change during the start restarts the wait): about 1 s of an idle page before the file
browser shows. The notebook image disables that plugin and loads a replacement (docker/notebook/lab/) that saves
in the background instead. What a researcher relies on must still hold: the layout is saved and restored on the
next load, and ``?reset`` clears it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from launcher.models import SessionStatus
from tests.helpers import new_context, wait_for
from tests.test_browser_origins import console_stand_in, open_in_browser
from tests.web import OriginClient, make_login, opened

pytestmark = pytest.mark.docker
LISTING = ".jp-DirListing-content .jp-DirListing-item"
NOTEBOOK_TAB = ".lm-DockPanel-tabBar .lm-TabBar-tab:has-text('alpha_research.ipynb')"


def _workspace(client) -> dict:
    """The saved default workspace's data ({} if none)."""
    answer = client.get("/lab/api/workspaces")
    assert answer.status_code == 200, answer.status_code
    spaces = answer.json()["workspaces"]
    return dict(zip(spaces["ids"], (v["data"] for v in spaces["values"]), strict=True)).get("default", {})


def _until(page, predicate, what: str, timeout: float = 30) -> None:
    """Wait with the page's requests served: the test's browser context routes them through Playwright, which
    answers only while the test calls into it."""

    def check() -> bool:
        page.wait_for_timeout(200)
        return bool(predicate())

    wait_for(check, timeout, what)


@contextlib.contextmanager
def _lab_open(st, browser, name: str) -> Iterator[tuple[OriginClient, Any]]:
    """A new session of ``name``'s opened in its own browser context, JupyterLab loaded on the template notebook until
    the file browser lists files: (the origin's client, the page). Both are closed afterwards."""
    user = st.actor(name)
    session = st.service.wait(user, st.service.launch(user, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    client = opened(st, session.id, user.name)
    context = new_context(browser)
    try:
        with console_stand_in(st, {user.name: make_login(st.store.redis, st.settings, user.name)}):
            open_in_browser(context, client, user.name)
        page = context.new_page()
        page.goto(client.origin + "/lab/tree/alpha_research.ipynb")
        page.wait_for_selector(LISTING, timeout=60_000)
        yield client, page
    finally:
        context.close()
        client.close()


def test_the_start_does_not_wait_for_the_workspace_save_and_the_layout_still_persists(clean_stack, browser):
    with _lab_open(clean_stack, browser, "ls-lena") as (client, page):
        page.wait_for_selector(NOTEBOOK_TAB, timeout=60_000)

        # The replacement is what runs, and the core plugin is off.
        config = json.loads(page.eval_on_selector("#jupyter-config-data", "e => e.textContent"))
        assert "@jupyterlab/apputils-extension:state" in config["disabledExtensions"]
        assert "nbl-fast-state" in page.evaluate("Object.keys(window._JUPYTERLAB || {})")
        assert page.title().startswith("alpha_resear")  # the tab title follows the open notebook, as before

        # The layout is saved in the background, with the open notebook in it.
        _until(page, lambda: "notebook:alpha_research.ipynb" in _workspace(client), "the workspace to be saved")
        assert "alpha_research.ipynb" in json.dumps(_workspace(client)["layout-restorer:data"])

        # A later load without a path restores it.
        page.goto(client.origin + "/lab")
        page.wait_for_selector(LISTING, timeout=60_000)
        page.wait_for_selector(NOTEBOOK_TAB, timeout=60_000)

        # ?reset clears it: no notebook comes back, and the address loses ?reset.
        page.goto(client.origin + "/lab?reset")
        page.wait_for_selector(LISTING, timeout=60_000)
        page.wait_for_function("!location.search.includes('reset')", timeout=30_000)
        page.wait_for_timeout(1500)
        assert page.locator(NOTEBOOK_TAB).count() == 0
        _until(page, lambda: "notebook:alpha_research.ipynb" not in _workspace(client), "the cleared workspace")


VERIFY = "window._JUPYTERLAB['nbl-fast-settings'].get('./verify').then(f => f().default())"
THEMES = "/lab/api/settings/@jupyterlab/apputils-extension:themes"


def test_settings_are_the_stock_registrys_without_its_compiled_validators_and_user_settings_apply(
    clean_stack, browser
):
    """The image replaces JupyterLab's setting registry plugin with one whose validator fills in defaults by walking
    the schema where a plugin's user settings are empty (no ajv compile at each page load). Every plugin's settings
    must equal what JupyterLab's own registry makes of the same plugins; a user's own settings still apply."""
    with _lab_open(clean_stack, browser, "ls-sam") as (client, page):
        config = json.loads(page.eval_on_selector("#jupyter-config-data", "e => e.textContent"))
        assert "@jupyterlab/apputils-extension:settings" in config["disabledExtensions"]

        # In the page: the walk against ajv for each plugin, and a stock registry against the one in use.
        report = page.evaluate(VERIFY)
        assert report["plugins"] >= 60, report  # JupyterLab 4 has about 70
        assert report["walked"] == report["plugins"] and report["fallback"] == [], report
        assert report["mismatched"] == [], report
        assert report["compared"] == report["plugins"] and report["differ"] == [], report
        assert page.evaluate("document.body.dataset.jpThemeName") == "JupyterLab Light"

        # A user's own setting (not empty: JupyterLab's validator checks it) applies after a reload.
        assert client.get("/lab").status_code == 200  # the XSRF cookie
        answer = client.request("PUT", THEMES, json={"raw": '{"theme": "JupyterLab Dark"}'})
        assert answer.status_code == 204, (answer.status_code, answer.text[:200])
        page.reload()
        page.wait_for_selector(LISTING, timeout=60_000)
        page.wait_for_function("document.body.dataset.jpThemeName === 'JupyterLab Dark'", timeout=30_000)
        report = page.evaluate(VERIFY)
        assert report["mismatched"] == [] and report["differ"] == [], report
