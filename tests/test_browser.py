"""End to end in a real browser (Debian's chromium via Playwright) against the real stack.

Log in as a researcher, launch the alpha research template, wait for running, open JupyterLab
through the Open link, run a cell, come back, stop. Screenshots of each step go to the folder the
test prints (build/test-artifacts/browser).
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from launcher.models import Role, SessionStatus
from launcher.settings import REPO_ROOT
from tests.helpers import free_port, new_context, spawn, wait_for
from tests.stack import http_ok, start_console
from ui.auth import UserStore

pytestmark = pytest.mark.docker
ARTIFACTS = REPO_ROOT / "build" / "test-artifacts" / "browser"


def settle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]', timeout=30_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


def test_researcher_journey_in_a_real_browser(clean_stack, browser, tmp_path):
    """Login -> launch -> running -> JupyterLab runs a cell -> back -> stop, with a screenshot per step."""
    st = clean_stack
    settings = st.settings.model_copy(update={"users_file": tmp_path / "users.json"})
    UserStore(settings.users_file).set_user("br-rita", Role.RESEARCHER, "rita-password-1")
    console, url = start_console(settings, tmp_path, LAUNCHER_USERS_FILE=str(settings.users_file))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {ARTIFACTS}")
    context = new_context(browser)
    page = context.new_page()
    try:
        page.goto(url)
        settle(page)
        page.get_by_text("Log in").first.click()
        page.wait_for_url(re.compile(r".*/login$"))
        page.fill("#username", "br-rita")
        page.fill("#password", "rita-password-1")
        page.screenshot(path=ARTIFACTS / "01-login.png")
        page.click("button[type=submit]")
        settle(page)
        page.wait_for_selector(".st-key-launch-alpha_research button", timeout=30_000)
        page.screenshot(path=ARTIFACTS / "02-templates.png", full_page=True)

        page.click(".st-key-launch-alpha_research button")
        open_link = page.get_by_role("link", name="Open JupyterLab")
        open_link.wait_for(timeout=120_000)
        page.screenshot(path=ARTIFACTS / "03-running.png", full_page=True)
        session = st.store.live_session_for("br-rita")
        assert session.status == SessionStatus.RUNNING
        href = open_link.get_attribute("href")
        assert href == session.open_url()

        lab = context.new_page()
        lab.goto(href)  # the open flow: session origin -> console authorizes -> one-time code -> the notebook
        lab.wait_for_url(f"{session.url}/lab/tree/alpha_research.ipynb", timeout=60_000)
        assert "token" not in lab.url and "code=" not in lab.url  # the address bar ends clean
        lab.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
        lab.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page_config = lab.evaluate("document.getElementById('jupyter-config-data').textContent")
        assert st.store.get(session.id).token.get_secret_value() not in page_config
        lab.wait_for_selector(".jp-StatusBar-Widget:has-text('Python 3 (ipykernel) | Idle')", timeout=60_000)
        lab.click(".jp-Notebook .jp-Cell >> nth=0")
        lab.keyboard.press("Escape")
        lab.keyboard.press("b")
        lab.keyboard.press("Enter")
        lab.keyboard.type("print('answer', 6 * 7)")
        lab.keyboard.press("Shift+Enter")
        lab.wait_for_selector(".jp-OutputArea-output:has-text('answer 42')", timeout=60_000)
        lab.screenshot(path=ARTIFACTS / "04-jupyterlab.png")
        lab.close()

        page.bring_to_front()
        page.get_by_role("button", name="Stop…").click()  # the console asks first
        page.get_by_role("button", name="Yes, stop it").click()
        page.wait_for_selector(".st-key-launch-alpha_research button", timeout=60_000)
        page.screenshot(path=ARTIFACTS / "05-stopped.png", full_page=True)
        wait_for(lambda: st.store.get(session.id).status == SessionStatus.STOPPED, 30, "stopped in Redis")
        assert st.containers(session=session.id) == []
    finally:
        for i, open_page in enumerate(context.pages):  # the last state of every tab, for diagnosis
            open_page.screenshot(path=ARTIFACTS / f"last-tab-{i}.png")
        context.close()
        console.stop()


def test_oidc_login_maps_roles_from_a_real_provider(stack, browser, tmp_path):
    """Log in through a real local OpenID Connect provider; the roles claim decides the pages shown."""
    port = free_port()
    users = [
        {"sub": "oidc-olive", "email": "olive@example.com", "roles": ["researcher"]},
        {"sub": "oidc-adam", "email": "adam@example.com", "roles": ["viewer", "admin"]},
    ]
    argv = [sys.executable, "-m", "oidc_provider_mock", "-H", "127.0.0.1", "-p", str(port)]
    for u in users:
        argv += ["--user-claims", json.dumps(u)]
    provider = spawn("oidc", argv, tmp_path / "oidc.log")
    metadata = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
    wait_for(lambda: http_ok(metadata), 30, "the OIDC provider")
    console, url = start_console(
        stack.settings,
        tmp_path,
        LAUNCHER_AUTH_MODE="oidc",
        LAUNCHER_OIDC_METADATA_URL=metadata,
        LAUNCHER_OIDC_CLIENT_ID="launcher-console",
        LAUNCHER_OIDC_CLIENT_SECRET="console-secret",
        LAUNCHER_COOKIE_SECRET="an-oidc-cookie-secret-for-tests",
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        for user, role, admin_visible in (("oidc-olive", "researcher", False), ("oidc-adam", "admin", True)):
            context = new_context(browser)
            page = context.new_page()
            try:
                page.goto(url)
                settle(page)
                page.get_by_role("link", name="Log in").click()  # /login sends the browser to the provider
                page.wait_for_url(re.compile(rf"^http://127\.0\.0\.1:{port}/"), timeout=30_000)
                page.get_by_role("button", name=user).click()
                page.wait_for_url(re.compile(rf"^{re.escape(url)}"), timeout=30_000)
                settle(page)
                page.get_by_text(f"Signed in as {user}").wait_for(timeout=30_000)
                sidebar = page.inner_text("[data-testid=stSidebar]")
                assert f"({role})" in sidebar, sidebar
                page.wait_for_selector(".st-key-launch-alpha_research button", timeout=30_000)
                assert ("Admin" in page.inner_text("[data-testid=stSidebar]")) is admin_visible
                page.screenshot(path=ARTIFACTS / f"06-oidc-{user}.png", full_page=True)
                # The login is the launcher's own (server-side, in Redis), not Streamlit's identity cookie.
                cookies = {c["name"]: c for c in context.cookies()}
                assert cookies["nbl_login"]["httpOnly"] and not any(n.startswith("_streamlit_user") for n in cookies)
                assert [(e.action, e.reason) for e in stack.store.audit(user=user)][:1] == [("login", "oidc")]
                page.get_by_role("button", name="Log out").click()
                page.get_by_role("link", name="Log in").wait_for(timeout=30_000)
                assert stack.store.audit(user=user)[0].action == "logout"
            finally:
                page.screenshot(path=ARTIFACTS / f"last-oidc-{user}.png")
                context.close()
    finally:
        console.stop()
        provider.stop()
