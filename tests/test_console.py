"""The Streamlit console: AppTest per role (real Redis; the Docker stack where a notebook must run), and real
Chromium for what only a browser shows (the logout form, a fragment refreshing an open tab)."""

from __future__ import annotations

import re
import secrets
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import ui.context
from launcher.logins import LoginStore
from launcher.models import Actor, Role, SessionStatus
from launcher.settings import REPO_ROOT, Settings
from launcher.store import SessionStore
from tests.helpers import new_context
from tests.stack import random_instance, start_console
from ui.auth import COOKIE, UserStore, sign

APP = str(REPO_ROOT / "ui" / "app.py")


class Browser:
    """What the page scripts see of the browser: its cookies (AppTest cannot send any, so the tests set them)."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}


def _console_factory(settings: Settings, monkeypatch, tmp_path):
    """Run the console's pages with AppTest as a user logged in through a real Redis login (password mode)."""
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LAUNCHER_AUTH_MODE", "password")
    monkeypatch.setenv("LAUNCHER_WARN_BEFORE_REAP_S", str(5 * 3600))  # show the keep-running offer
    monkeypatch.chdir(tmp_path)
    browser = Browser()
    monkeypatch.setattr(ui.context, "request_cookies", lambda: browser.cookies)
    st.cache_resource.clear()
    users = UserStore(settings.users_file)
    logins = LoginStore(SessionStore.from_settings(settings).redis, settings)

    def make(user: str, role: str) -> AppTest:
        if users.role_of(user) is None:
            users.set_user(user, Role(role), f"{user}-password")
        browser.cookies = {COOKIE: sign(settings, logins.create(user, Role(role)))}
        at = AppTest.from_file(APP, default_timeout=60)
        return at.run()

    make.browser = browser
    make.users = users
    make.logins = logins
    return make


@pytest.fixture
def redis_console(redis_url, monkeypatch, tmp_path):
    """An AppTest factory for the console on a private Redis (no worker: launches stay queued)."""
    settings = Settings(
        instance=random_instance(),
        redis_url=redis_url,
        users_file=tmp_path / "users.json",
        cookie_secret=secrets.token_urlsafe(32),
        workspaces_dir=tmp_path / "workspaces",
        sessions_dir=tmp_path / "sessions",
        data_dir=tmp_path / "data",
    )
    make = _console_factory(settings, monkeypatch, tmp_path)
    make.settings = settings
    make.store = SessionStore.from_settings(settings)
    yield make
    st.cache_resource.clear()


@pytest.fixture
def console(clean_stack, monkeypatch, tmp_path):
    """An AppTest factory for the console wired to the whole stack (Redis, worker, Docker)."""
    settings = clean_stack.settings.model_copy(update={"users_file": tmp_path / "users.json"})
    yield _console_factory(settings, monkeypatch, tmp_path)
    st.cache_resource.clear()


def texts(at: AppTest) -> str:
    """Everything the page shows, as text (elements' protobufs, link targets included)."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def launch_keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key and b.key.startswith("launch-")}


def signed_out(at: AppTest) -> bool:
    """The page shows the login link, or (AppTest reruns a page file directly) the page's own refusal."""
    page = texts(at)
    return "Signed in as" not in page and ("/login" in page or "You do not have access to this page." in page)


def rerun_until(at: AppTest, predicate, timeout: float, what: str) -> AppTest:
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        if predicate(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page shows:\n{texts(at)[-2000:]}")
        time.sleep(0.3)


# -- Redis only --------------------------------------------------------------------------------------


def test_anonymous_visitor_gets_the_login_link_only(redis_console):
    """Without a login cookie the console shows only the Log in link."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "/login" in texts(at) and not at.button and "Signed in as" not in texts(at)


def test_viewer_sees_no_launch(redis_console):
    """A viewer gets the overview page without any Launch button."""
    at = redis_console("ui-vera", "viewer")
    assert not at.exception
    assert launch_keys(at) == set()
    assert "may not launch notebooks" in texts(at)


def test_sidebar_logout_is_a_post_form_with_a_csrf_token(redis_console):
    """The Log out control is a POST form to /logout carrying this login's CSRF token (no GET link)."""
    at = redis_console("ui-rita", "researcher")
    page = texts(at)
    assert 'method=\\"post\\" action=\\"/logout\\"' in page and 'name=\\"csrf\\"' in page
    assert 'href=\\"/logout\\"' not in page


def test_researcher_launch_is_queued_in_redis(redis_console):
    """A researcher's Launch reserves a queued session in Redis and the page shows it."""
    at = redis_console("ui-rosa", "researcher")
    assert launch_keys(at) >= {"launch-alpha_research", "launch-factor_analysis", "launch-backtest_review"}
    at.button(key="launch-alpha_research").click().run()
    assert not at.exception
    session = redis_console.store.live_session_for("ui-rosa")
    assert session is not None and session.status == SessionStatus.QUEUED
    assert "Queued" in texts(at) and launch_keys(at) == set()


def test_demoted_users_stale_launch_click_does_nothing(redis_console):
    """A Launch button drawn before a demotion launches nothing when clicked after it; the tab falls back to login."""
    at = redis_console("ui-dora", "researcher")
    assert "launch-alpha_research" in launch_keys(at)
    redis_console.users.set_user("ui-dora", Role.VIEWER, "ui-dora-password")  # the users file only
    at.button(key="launch-alpha_research").click().run()
    assert not at.exception
    assert redis_console.store.live_session_for("ui-dora") is None
    assert launch_keys(at) == set() and signed_out(at)
    events = redis_console.store.audit(user="ui-dora")
    assert [(e.action, e.reason) for e in events] == [("logout", "role_changed")]


def test_revoked_login_loses_stop_at_the_next_run(redis_console):
    """When the login is revoked (logout elsewhere, `ui.users remove`), the next run shows no Stop and stops nothing."""
    at = redis_console("ui-lena", "researcher")
    at.button(key="launch-alpha_research").click().run()
    assert "stop" in {b.key for b in at.button}
    redis_console.logins.revoke_user("ui-lena")
    at.button(key="stop").click().run()
    assert redis_console.store.live_session_for("ui-lena").status == SessionStatus.QUEUED  # not stopped
    assert "stop" not in {b.key for b in at.button} and signed_out(at)


def test_feature_switch_turns_the_page_off(redis_console, monkeypatch):
    """With the feature switched off, nobody gets the launcher."""
    monkeypatch.setenv("LAUNCHER_FEATURE_NOTEBOOK_LAUNCHER", "false")
    st.cache_resource.clear()
    at = redis_console("ui-rita", "researcher")
    assert "switched off" in texts(at) and not at.button


# -- the whole stack ---------------------------------------------------------------------------------


@pytest.mark.docker
def test_researcher_launches_sees_status_and_stops(clean_stack, console):
    """A researcher launches from a card, watches it become running with an Open link, keeps it alive, stops it."""
    at = console("ui-rita", "researcher")
    assert not at.exception
    assert launch_keys(at) >= {"launch-alpha_research", "launch-factor_analysis", "launch-backtest_review"}
    at.button(key="launch-alpha_research").click().run()
    session = clean_stack.store.live_session_for("ui-rita")
    assert session is not None and session.template == "alpha_research"
    seen = set()

    def running(a: AppTest) -> bool:
        page = texts(a)
        for word in ("Queued", "Starting", "Running"):
            if word in page:
                seen.add(word)
        return "Open JupyterLab" in page

    rerun_until(at, running, 120, "the session to run")
    assert "Running" in seen
    token = clean_stack.store.get(session.id).token.get_secret_value()
    assert token not in texts(at)  # the Open link starts the open flow; no token on the page
    before = clean_stack.store.get(session.id).last_activity_at
    at.button(key="keepalive").click().run()
    assert clean_stack.store.get(session.id).last_activity_at > before
    assert any(e.action == "keepalive" for e in clean_stack.store.audit(user="ui-rita"))
    at.button(key="stop").click().run()
    rerun_until(at, lambda a: "launch-alpha_research" in launch_keys(a), 60, "the cards to come back")
    assert clean_stack.store.get(session.id).status == SessionStatus.STOPPED


@pytest.mark.docker
def test_admin_sees_others_stops_one_and_stops_all_without_tokens(clean_stack, console):
    """An admin sees other users' sessions (never a token), stops one, then confirms stop-all."""
    op = Actor.operator("ui-test")
    svc = clean_stack.service
    sessions = [svc.launch(op, "alpha_research", user=u) for u in ("ui-owen", "ui-olga", "ui-omar")]
    for s in sessions:
        assert svc.wait(op, s.id, {SessionStatus.RUNNING}, 120).status == SessionStatus.RUNNING
    tokens = [clean_stack.store.get(s.id).token.get_secret_value() for s in sessions]

    at = console("ui-ada", "admin")
    at.switch_page("pages/admin.py").run()
    assert not at.exception
    page = texts(at)
    assert all(u in page for u in ("ui-owen", "ui-olga", "ui-omar"))
    assert not any(t in page for t in tokens)

    at.selectbox(key="stop-one").select(sessions[0].id).run()
    at.button(key="stop-one-button").click().run()
    assert svc.wait(op, sessions[0].id, {SessionStatus.STOPPED}, 60).stop_reason == "admin"

    at.button(key="stop-all").click().run()
    assert "Stop all 2 live sessions?" in texts(at)
    at.button(key="stop-all-yes").click().run()
    rerun_until(at, lambda a: "Stop all finished: 2 of 2 stopped." in texts(a), 120, "stop-all to finish")
    assert clean_stack.store.count_live() == 0
    at.text_input(key="audit-user").input("ui-olga").run()
    page = texts(at)
    assert "ui-olga" in page and "ui-owen" not in page.split("Audit trail", 1)[1]
    assert not any(t in texts(at) for t in tokens)


@pytest.mark.docker
def test_other_researcher_never_sees_a_token(clean_stack, console):
    """One user's token never appears on another researcher's page."""
    op = Actor.operator("ui-test")
    s = clean_stack.service.launch(op, "alpha_research", user="ui-tina")
    clean_stack.service.wait(op, s.id, {SessionStatus.RUNNING}, 120)
    token = clean_stack.store.get(s.id).token.get_secret_value()
    at = console("ui-ulf", "researcher")
    assert token not in texts(at)
    assert "launch-alpha_research" in launch_keys(at)


# -- real Chromium (no Docker needed, but a browser: kept out of `make test-fast`) --------------------


def settle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]', timeout=30_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


@pytest.fixture
def live_console(redis_url, tmp_path):
    """The real console process (``streamlit run ui/asgi.py``) on a private Redis, and its settings."""
    settings = Settings(
        instance=random_instance(),
        redis_url=redis_url,
        users_file=tmp_path / "users.json",
        cookie_secret=secrets.token_urlsafe(32),
        workspaces_dir=tmp_path / "workspaces",
        sessions_dir=tmp_path / "sessions",
        data_dir=tmp_path / "data",
    )
    proc, url = start_console(settings, tmp_path, LAUNCHER_USERS_FILE=str(settings.users_file))
    try:
        yield settings, url
    finally:
        proc.stop()


def _browser_login(page, url: str, user: str, password: str) -> None:
    page.goto(url)
    settle(page)
    page.get_by_text("Log in").first.click()
    page.wait_for_url(re.compile(r".*/login(\?.*)?$"))
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    settle(page)
    page.wait_for_selector(".st-key-launch-alpha_research button", timeout=30_000)


@pytest.mark.docker
def test_logout_button_works_in_a_browser_and_the_copied_cookie_dies(browser, live_console):
    """The sidebar's Log out (a POST form) ends the login; a cookie copied before it no longer opens the console."""
    settings, url = live_console
    UserStore(settings.users_file).set_user("br-lou", Role.RESEARCHER, "lou-password-1")
    context = new_context(browser)
    page = context.new_page()
    try:
        _browser_login(page, url, "br-lou", "lou-password-1")
        copied = next(c for c in context.cookies() if c["name"] == COOKIE)
        assert copied["httpOnly"] and copied["sameSite"] == "Lax"
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(re.compile(r".*/login$"), timeout=30_000)
        assert not any(c["name"] == COOKIE for c in context.cookies())
        store = SessionStore.from_settings(settings)
        assert [e.action for e in store.audit(user="br-lou")] == ["logout", "login"]
    finally:
        context.close()
    replay = new_context(browser)
    replay.add_cookies([{"name": COOKIE, "value": copied["value"], "url": url}])
    page = replay.new_page()
    try:
        page.goto(url)
        settle(page)
        page.get_by_text("Log in").first.wait_for(timeout=30_000)
        assert "Signed in as" not in page.inner_text("body")
        assert page.locator(".st-key-launch-alpha_research button").count() == 0
    finally:
        replay.close()


@pytest.mark.docker
def test_demoted_users_open_tabs_lose_launch_and_stop_on_their_next_refresh(browser, live_console):
    """Open tabs of a user demoted in the users file lose Launch and Stop within a fragment interval, untouched."""
    settings, url = live_console
    users = UserStore(settings.users_file)
    users.set_user("br-dora", Role.RESEARCHER, "dora-password-1")
    users.set_user("br-ivan", Role.RESEARCHER, "ivan-password-1")
    context = new_context(browser)
    cards, panel = context.new_page(), new_context(browser).new_page()
    try:
        _browser_login(cards, url, "br-dora", "dora-password-1")
        _browser_login(panel, url, "br-ivan", "ivan-password-1")
        panel.click(".st-key-launch-alpha_research button")  # no worker here: it stays queued, with Cancel
        panel.wait_for_selector(".st-key-stop button", timeout=30_000)
        users.set_user("br-dora", Role.VIEWER, "dora-password-1")
        users.set_user("br-ivan", Role.VIEWER, "ivan-password-1")
        demoted_at = time.monotonic()
        cards.wait_for_selector(".st-key-launch-alpha_research button", state="detached", timeout=10_000)
        panel.wait_for_selector(".st-key-stop button", state="detached", timeout=10_000)
        assert time.monotonic() - demoted_at < 2 * 2 + 2  # within one refresh interval (2 s), plus slack
        cards.get_by_role("link", name="Log in").wait_for(timeout=10_000)
        store = SessionStore.from_settings(settings)
        assert store.live_session_for("br-dora") is None
        assert store.live_session_for("br-ivan").status == SessionStatus.QUEUED  # Stop was never pressed
    finally:
        panel.context.close()
        context.close()
