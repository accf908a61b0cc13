"""The Streamlit console: AppTest per role (real Redis; the Docker stack where a notebook must run), and real
Chromium for what only a browser shows (the logout form, a fragment refreshing an open tab)."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from pydantic import SecretStr
from streamlit.testing.v1 import AppTest

import ui.context
from launcher.adapters.redis_logins import LoginStore
from launcher.adapters.redis_store import SessionStore
from launcher.models import Actor, AuditEvent, Reason, Role, Session, SessionStatus
from launcher.settings import REPO_ROOT, Settings
from launcher.views import PHASES, progress, scrub, session_view, typical_launch
from tests.helpers import free_port, new_context, register_hosts
from tests.stack import random_instance, start_console
from ui.auth import COOKIE, UserStore, sign
from ui.format import plural

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
        workspace_images_dir=tmp_path / "workspace-images",
        workspace_quota_enforce="measure",
    )
    make = _console_factory(settings, monkeypatch, tmp_path)
    make.settings = settings
    make.store = SessionStore.from_settings(settings)
    register_hosts(make.store, settings.host_name)
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
    assert "Waiting for room" in texts(at) and launch_keys(at) == set()


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
        for word in ("Waiting for room", "Preparing the workspace", "Starting Jupyter", "Ready"):
            if word in page:
                seen.add(word)
        return "Open JupyterLab" in page

    rerun_until(at, running, 120, "the session to run")
    assert "Ready" in seen
    token = clean_stack.store.get(session.id).token.get_secret_value()
    assert token not in texts(at)  # the Open link starts the open flow; no token on the page
    before = clean_stack.store.get(session.id).last_activity_at
    at.button(key="keepalive").click().run()
    assert clean_stack.store.get(session.id).last_activity_at > before
    assert any(e.action == "keepalive" for e in clean_stack.store.audit(user="ui-rita"))
    at.button(key="stop").click().run()
    assert "anything not saved in JupyterLab is lost" in texts(at)
    at.button(key="stop-yes").click().run()
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
    at.switch_page("screens/admin.py").run()
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
    rerun_until(at, lambda a: "Stop all finished: 2 of 2 sessions stopped." in texts(a), 120, "stop-all to finish")
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
        workspace_images_dir=tmp_path / "workspace-images",
        workspace_quota_enforce="measure",
        console_url=f"http://127.0.0.1:{free_port()}",  # never the default 8501 of a console running here
    )
    register_hosts(SessionStore.from_settings(settings), settings.host_name)
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


# -- the pure parts of what the pages show ----------------------------------------------------------


def _event(sid: str, action: str, previous: str, at: datetime) -> AuditEvent:
    return AuditEvent(
        id="1-0",
        time=at,
        session_id=sid,
        user="u",
        template="t",
        host="h",
        action=action,
        previous=previous,
        actor="a",
        reason="r",
    )


def test_typical_launch_is_the_median_of_recent_launch_to_running_times():
    """The typical launch time is the median queued-to-running time; unfinished launches do not count."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for i, seconds in enumerate((4, 6, 30)):
        events += [
            _event(f"s{i}", "queued", "", t0),
            _event(f"s{i}", "running", "starting", t0 + timedelta(seconds=seconds)),
        ]
    events.append(_event("s9", "queued", "", t0))
    assert typical_launch(events) == timedelta(seconds=6)
    assert typical_launch([]) is None


def test_progress_moves_forward_through_the_phases_and_never_completes_early(unit_settings):
    """Each phase's bar starts past the previous one's and stays below 1.0 until the session is ready."""
    session = Session(id="abcdefabcdef", user="u", template="alpha_research", token=SecretStr("x"))
    now = session.created_at + timedelta(seconds=100)
    typical = timedelta(seconds=10)
    fractions = []
    for status, phase in (
        (SessionStatus.WAITING, None),
        (SessionStatus.QUEUED, None),
        (SessionStatus.STARTING, "preparing workspace"),
        (SessionStatus.STARTING, "waiting for Jupyter"),
        (SessionStatus.RUNNING, None),
    ):
        view = session_view(session.model_copy(update={"status": status, "phase": phase}), unit_settings, now)
        p = progress(view, now, typical)
        assert p.label.startswith(PHASES[p.step].split(":")[0])
        fractions.append(p.fraction)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[-2] < 1.0


def test_scrub_hides_the_session_secret_and_anything_token_like():
    """A start log shown to people loses the secret and token-looking strings, keeping the rest readable."""
    secret = "s3cr3t-value"
    text = f"start {secret}\nhttp://x/lab?token=abc123&x=1\nAuthorization: Bearer zzz\nid {'f' * 64}\nImportError: no module"
    out = scrub(text, [secret])
    assert secret not in out and "abc123" not in out and "zzz" not in out and "f" * 64 not in out
    assert "ImportError: no module" in out


def test_plurals():
    """Counts read as English."""
    assert [plural(n, "live session") for n in (0, 1, 2)] == ["0 live sessions", "1 live session", "2 live sessions"]


def test_a_failed_start_keeps_its_scrubbed_start_log_and_the_owner_sees_it(redis_console):
    """The worker keeps the failing container's last lines (secret and tokens hidden) and the page shows them."""
    from launcher.adapters.memory_runtime import FakeRuntime
    from launcher.spec import container_name
    from launcher.transitions import ActorKind, By, MarkStarting
    from workers import lifecycle

    settings, store = redis_console.settings, redis_console.store
    at = redis_console("ui-fred", "researcher")
    at.button(key="launch-alpha_research").click().run()
    session = store.live_session_for("ui-fred")
    store.apply(session.id, MarkStarting(by=By(ActorKind.WORKER, "test"), reason=Reason.START))
    runtime = FakeRuntime()
    secret = session.token.get_secret_value()
    name = container_name(settings, session.id)
    runtime.output[name] = "\n".join(
        [f"line {i}" for i in range(100)] + [f"listening on http://x/lab?token={secret}", "ModuleNotFoundError: nope"]
    )
    ctx = lifecycle.WorkerContext(settings, store, runtime)
    ended = lifecycle._fail_start(ctx, session.id, "the notebook server exited while starting", "exit 1", {})
    assert ended.status == SessionStatus.ERROR
    kept = store.get(session.id).start_log
    assert secret not in kept and "ModuleNotFoundError: nope" in kept and "line 0\n" not in kept
    rerun_until(at, lambda a: "did not start" in texts(a), 10, "the failure to show")
    page = texts(at)
    assert "ModuleNotFoundError: nope" in page and secret not in page and "exited while starting" in page


def test_workspace_files_are_listed_and_served_without_following_symlinks(redis_console, tmp_path):
    """The files route serves the owner's files and a zip of them, never through a symlink, never outside."""
    import io
    import zipfile

    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from ui.asgi import Console
    from ui.workspace import list_files, workspace_root

    settings = redis_console.settings
    root = settings.workspaces_dir / "ui-wanda"
    (root / "results").mkdir(parents=True)
    (root / "results" / "ic.csv").write_text("date,ic\n2024-01-02,0.05\n")
    (root / "notes.md").write_text("# notes\n")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "escape").symlink_to(tmp_path)
    assert [e.path for e in list_files(workspace_root(settings, "ui-wanda"))[0]] == ["notes.md", "results/ic.csv"]

    console = Console(settings, redis_console.store.redis)
    redis_console.users.set_user("ui-wanda", Role.RESEARCHER, "wanda-password")
    cookies = {COOKIE: sign(settings, redis_console.logins.create("ui-wanda", Role.RESEARCHER))}

    client = TestClient(Starlette(routes=console.routes()), cookies=cookies)

    def get(**params: str):
        response = client.get("/_nbl/files", params=params)
        return response.status_code, response.content

    assert get(path="results/ic.csv") == (200, b"date,ic\n2024-01-02,0.05\n")
    assert get(path="passwd")[0] == 404 and get(path="escape/users.json")[0] == 404
    assert get(path="../ui-other/x")[0] == 400 and get(path="/etc/passwd")[0] == 400
    status, body = get(archive="1")
    assert status == 200
    assert sorted(zipfile.ZipFile(io.BytesIO(body)).namelist()) == ["notes.md", "results/ic.csv"]
    assert TestClient(Starlette(routes=console.routes())).get("/_nbl/files?path=notes.md").status_code == 403


def test_cli_start_refuses_users_the_console_does_not_know(unit_settings, tmp_path):
    """In password mode the CLI starts sessions only for users of the users file, unless --service-account."""
    from launcher.cli import _parser, _require_known_user
    from launcher.errors import InvalidRequest

    settings = unit_settings.model_copy(update={"users_file": tmp_path / "users.json"})
    UserStore(settings.users_file).set_user("cli-known", Role.RESEARCHER, "known-password")
    _require_known_user(settings, "cli-known")
    with pytest.raises(InvalidRequest, match="not a console user"):
        _require_known_user(settings, "cli-typo")
    with pytest.raises(InvalidRequest, match="invalid user id"):
        _require_known_user(settings, "../x")
    _require_known_user(settings.model_copy(update={"auth_mode": "oidc"}), "cli-typo")  # the provider knows them
    args = _parser().parse_args(["start", "--user", "svc-batch", "--template", "t", "--service-account"])
    assert args.service_account
