"""The idle warning inside JupyterLab's tab: /_nbl/status, /_nbl/keepalive and the script nginx adds to the lab page.

Two levels. Against the real nginx, authorizer and Redis with a stand-in for Jupyter (no Docker): the routes are
authorized like every request (cookie, Origin), carry no secret, are never cached, the lab's HTML (and nothing else)
gets the script, and a stopped session's page says so. Against the whole stack in Chromium (Docker): JupyterLab
shows the banner inside the warning window, "Keep running" records a keep-alive, and the tab says when the session
has stopped. Screenshots go to build/test-artifacts/console/.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from launcher.adapters.authorizer import IDLE_JS, idle_js_version, idle_status
from launcher.adapters.redis_store import SessionStore
from launcher.models import Actor, Role, Session, SessionStatus, new_session_id, new_token
from launcher.settings import REPO_ROOT, Settings
from tests.helpers import free_port, new_context, wait_for
from tests.stack import random_instance, start_beat, start_entrypoint, start_stack
from tests.test_browser_origins import console_stand_in, open_in_browser
from tests.web import OriginClient, make_login
from workers import hostfs

ARTIFACTS = REPO_ROOT / "build" / "test-artifacts" / "console"
LAB_HTML = b"<!doctype html><html><head><title>JupyterLab</title></head><body><div id='main'></div></body></html>"
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# -- the decision, pure -----------------------------------------------------------------------------------------


def _session(**kw) -> Session:
    base = dict(id=new_session_id(), user="iw-u", template="alpha_research", token=new_token())
    return Session(**{**base, **kw})


@pytest.mark.parametrize(
    ("fields", "left", "warn"),
    [
        ({"last_activity_at": NOW - timedelta(seconds=100)}, 500, False),  # 600 s timeout, warned 120 s before
        ({"last_activity_at": NOW - timedelta(seconds=481)}, 119, True),
        ({"last_activity_at": NOW - timedelta(seconds=700)}, 0, True),  # overdue: the reaper comes next
        ({"last_activity_at": NOW + timedelta(seconds=50)}, 600, False),  # a future timestamp counts as now
        ({"last_activity_at": NOW - timedelta(seconds=590), "kernels_busy": 1}, None, False),  # busy is not idle
        ({"last_activity_at": None, "started_at": NOW - timedelta(seconds=590)}, 10, True),
    ],
)
def test_idle_status_says_how_long_and_whether_to_warn(fields, left, warn):
    settings = Settings(idle_timeout_s=600, warn_before_reap_s=120, console_url="http://console.example")
    session = _session(**{"status": SessionStatus.RUNNING, "started_at": NOW - timedelta(hours=1), **fields})
    out = idle_status(session, settings, NOW)
    assert (out["status"], out["idle_left_s"], out["warn"]) == ("running", left, warn)
    assert out["warn_before_s"] == 120 and out["console"] == "http://console.example"
    assert session.token.get_secret_value() not in json.dumps(out)


def test_idle_status_of_a_session_that_is_not_running():
    out = idle_status(_session(status=SessionStatus.STOPPED), Settings(), NOW)
    assert (out["status"], out["idle_left_s"], out["warn"]) == ("stopped", None, False)


def test_the_script_writes_no_html():
    """Server data reaches the page only as text: no innerHTML, outerHTML, insertAdjacentHTML, document.write
    or eval in the script, and the only URL it takes from an answer must be http(s)."""
    code = IDLE_JS.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink
    assert "textContent" in code and "/^https?:" in code


# -- the routes, against the real nginx and authorizer (no Docker) ---------------------------------------------


class _Jupyter(BaseHTTPRequestHandler):
    """Stands where a session's Jupyter socket is: an HTML lab page, JSON elsewhere; notes what it was sent."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802
        _Jupyter.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        html = self.path.startswith("/lab") and not self.path.startswith("/lab/api/")
        body = LAB_HTML if html else json.dumps({"ok": True, "html": "</head>"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8" if html else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)

    def get_request(self):
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


def _put(store: SessionStore, session: Session) -> Session:
    """Write a session record as it stands (the routes read records; how one got there is not their concern)."""
    store.redis.set(f"{store.prefix}session:{session.id}", session.to_storage())
    return session


def _running(settings: Settings, store: SessionStore, user: str) -> tuple[Session, _UnixHTTPServer]:
    session = _session(user=user, host=settings.host_name)
    hostfs.prepare_rundir(settings, session.id, session.token.get_secret_value())
    sock = hostfs.socket_path(settings, session.id)
    server = _UnixHTTPServer(str(sock), _Jupyter)
    os.chown(sock, settings.notebook_uid, settings.proxy_gid)
    hostfs.lock_socket(settings, session.id)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = datetime.now(UTC)
    fields = {"status": SessionStatus.RUNNING, "url": settings.session_origin(session.id), "started_at": started}
    return _put(store, session.model_copy(update={**fields, "last_activity_at": started})), server


@pytest.fixture(scope="module")
def entry(redis_url, workdir):
    """nginx + authorizer of our own, two running sessions (two users) whose 'Jupyter' is a stand-in."""
    base = workdir / "idle-entry"
    base.mkdir(mode=0o755)
    port = free_port()
    settings = Settings(
        instance=random_instance(),
        redis_url=redis_url,
        sessions_dir=base / "sessions",
        workspaces_dir=base / "workspaces",
        public_url=f"http://nb.localhost:{port}",
        entrypoint_listen=f"127.0.0.1:{port}",
        console_url="http://127.0.0.1:9",
        idle_timeout_s=3600,
        warn_before_reap_s=3600,  # always inside the warning window
    )
    store = SessionStore.from_settings(settings)
    mine, s1 = _running(settings, store, "iw-alice")
    theirs, s2 = _running(settings, store, "iw-mallory")
    proc = start_entrypoint(settings, base / "nginx")
    yield settings, store, mine, theirs
    proc.stop()
    for server in (s1, s2):
        server.shutdown()
        server.server_close()
    store.redis.close()


def _open(settings: Settings, store: SessionStore, session: Session) -> OriginClient:
    client = OriginClient(settings, session.id)
    client.open(store.redis, make_login(store.redis, settings, session.user), Actor(name=session.user, role=Role.RESEARCHER))
    return client


def _keepalives(store: SessionStore, session_id: str) -> int:
    return sum(1 for e in store.audit(limit=500) if e.session_id == session_id and e.action == "keepalive")


def test_status_needs_the_cookie_and_tells_no_secret(entry):
    settings, store, mine, _ = entry
    stranger = OriginClient(settings, mine.id)
    r = stranger.get("/_nbl/status")
    assert r.status_code == 401 and r.json()["status"] == "no_login"
    assert r.headers["cache-control"] == "no-store"
    stranger.cookies["__Host-nbl"] = "x" * 43  # a forged cookie
    assert stranger.get("/_nbl/status").status_code == 401
    stranger.close()

    tab = _open(settings, store, mine)
    r = tab.get("/_nbl/status", headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["status"] == "running" and data["warn"] is True and 3500 < data["idle_left_s"] <= 3600
    assert data["console"] == settings.console_url
    assert r.headers["cache-control"] == "no-store" and r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    secret = mine.token.get_secret_value()
    assert secret not in r.text and secret not in str(r.headers)
    # A sibling session's page reading it (same-site fetch, the Lax cookie travels): refused.
    sibling = settings.session_origin("zzzzzzzzzzzz")
    r = tab.get("/_nbl/status", headers={"Origin": sibling, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"})
    assert r.status_code == 403
    tab.close()


def test_keepalive_only_from_the_sessions_own_origin(entry):
    """POST /_nbl/keepalive carrying another session's Origin (or none, or a claimed method) changes nothing; from
    the session's own origin it records the owner's keep-alive (one audit entry) and answers the new status."""
    settings, store, mine, theirs = entry
    tab = _open(settings, store, mine)
    other = settings.session_origin(theirs.id)
    before = store.get(mine.id).last_activity_at
    refused = [
        tab.post("/_nbl/keepalive", headers={"Origin": other, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}),
        tab.post("/_nbl/keepalive", headers={"Origin": "null"}),
        tab.post("/_nbl/keepalive", headers={"Origin": other, "X-Original-Method": "GET"}),  # nginx never lets it count
        tab.post("/_nbl/keepalive", headers={"Origin": other, "X-Nbl-Sid": theirs.id}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403], [r.text for r in refused]
    assert tab.get("/_nbl/keepalive").status_code == 405  # only POST changes anything
    assert store.get(mine.id).last_activity_at == before and _keepalives(store, mine.id) == 0
    # The other session's owner, on their own origin, cannot keep this one alive with their own cookie either.
    theirs_tab = _open(settings, store, theirs)
    stolen = OriginClient(settings, mine.id)
    stolen.cookies = dict(theirs_tab.cookies)
    assert stolen.post("/_nbl/keepalive").status_code == 401
    assert _keepalives(store, mine.id) == 0

    r = tab.post("/_nbl/keepalive")  # the session's own Origin (OriginClient sends it on POST)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    assert r.headers["cache-control"] == "no-store"
    after = store.get(mine.id)
    assert after.last_activity_at > before
    [entry_] = [e for e in store.audit(limit=500) if e.session_id == mine.id and e.action == "keepalive"]
    assert (entry_.actor, entry_.reason, entry_.user) == ("user:iw-alice", "keepalive", "iw-alice")
    # A second click within the throttle answers the same, without another audit entry.
    assert tab.post("/_nbl/keepalive").status_code == 200 and _keepalives(store, mine.id) == 1
    for client in (tab, theirs_tab, stolen):
        client.close()


def test_the_lab_page_and_only_it_gets_the_script(entry):
    settings, store, mine, _ = entry
    tab = _open(settings, store, mine)
    tag = f'<script src="/_nbl/idle.js?v={idle_js_version()}" defer></script></head>'
    _Jupyter.seen.clear()
    for path in ("/lab", "/lab/tree/alpha_research.ipynb"):
        r = tab.get(path, headers={"Accept-Encoding": "gzip, br"})
        assert r.status_code == 200 and "content-encoding" not in r.headers
        assert tag in r.text and r.text.count("idle.js") == 1, r.text
    assert all(not seen.get("accept-encoding") for seen in _Jupyter.seen), _Jupyter.seen  # asked uncompressed
    for path in ("/lab/api/settings", "/api/contents"):  # JSON, even with "</head>" in it, is left alone
        r = tab.get(path)
        assert r.status_code == 200 and "idle.js" not in r.text, r.text
    _Jupyter.seen.clear()
    tab.get("/api/contents", headers={"Accept-Encoding": "gzip"})
    assert _Jupyter.seen[0]["accept-encoding"] == "gzip"  # elsewhere the browser's header goes through as before
    # The script: JavaScript, cached for good (its URL carries its hash), served without a login.
    anyone = OriginClient(settings, mine.id)
    js = anyone.get(f"/_nbl/idle.js?v={idle_js_version()}")
    assert js.status_code == 200 and js.content == IDLE_JS.read_bytes()
    assert js.headers["content-type"].startswith("text/javascript")
    assert "max-age=31536000" in js.headers["cache-control"]
    assert js.headers["x-content-type-options"] == "nosniff"
    assert anyone.get("/_nbl/other").status_code == 404
    anyone.close()
    tab.close()


def test_a_stopped_sessions_tab_says_so(entry, redis_url):
    """Once stopped, the status says not_running (the script then shows "has stopped" with the console's link),
    keep-alive changes nothing, and reloading the tab shows a page that says it stopped and links back."""
    settings, store, _, _ = entry
    session, server = _running(settings, store, "iw-stella")
    try:
        tab = _open(settings, store, session)
        _put(store, session.model_copy(update={"status": SessionStatus.STOPPED, "stopped_at": datetime.now(UTC)}))
        wait_for(lambda: tab.get("/_nbl/status").status_code == 403, 3, "the stop to be seen")
        r = tab.get("/_nbl/status")
        assert r.json() == {"status": "not_running", "console": settings.console_url}
        assert tab.post("/_nbl/keepalive").status_code == 403
        page = tab.get("/lab/tree/alpha_research.ipynb")
        assert page.status_code == 403 and "This notebook has stopped" in page.text
        assert "start it again from the console" in page.text and f'href="{settings.console_url}"' in page.text
        # Without a valid cookie's reason (another origin's request), the page stays the generic one.
        other = tab.get("/lab", headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"})
        assert other.status_code == 403 and "This notebook has stopped" not in other.text and "not available" in other.text
        tab.close()
    finally:
        server.shutdown()
        server.server_close()


# -- in JupyterLab, in Chromium, against the whole stack -------------------------------------------------------

IDLE = 45.0
WARN = 35.0  # the banner shows once the session has been idle for 10 s


@pytest.fixture(scope="module")
def istack(workdir, redis_url):
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    st = start_stack(
        workdir / "idle-warning",
        redis_url,
        client,
        idle_timeout_s=IDLE,
        warn_before_reap_s=WARN,
        heartbeat_interval_s=1,
        reap_interval_s=1,
        reconcile_interval_s=3600,
    )
    beat = start_beat(st.settings, st.workdir, "beat")
    yield st
    beat.stop()
    st.stop_everything()
    st.shutdown()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png")


@pytest.mark.docker
def test_jupyterlab_shows_the_idle_warning_and_keep_running_works(istack, browser):
    st = istack
    user = "iw-ida"
    actor = st.actor(user)
    session = st.service.wait(actor, st.service.launch(actor, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    tab = OriginClient(st.settings, session.id)
    context = new_context(browser)
    with console_stand_in(st, {user: make_login(st.store.redis, st.settings, user)}):
        open_in_browser(context, tab, user)  # the open flow in the browser: it holds the origin's own cookie
    tab.close()
    page = context.new_page()
    try:
        page.goto(f"{session.url}/lab/tree/alpha_research.ipynb")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        banner = page.locator("#nbl-idle-banner")
        banner.get_by_text("because it has been idle").wait_for(timeout=60_000)
        text = banner.inner_text()
        assert "This notebook stops in 1 min because it has been idle." in text, text
        _shot(page, "i01-jupyterlab-idle-warning")
        before = st.store.get(session.id).last_activity_at
        clicked = datetime.now(UTC)
        banner.get_by_role("button", name="Keep running").click()
        wait_for(lambda: st.store.get(session.id).last_activity_at > before, 10, "the keep-alive")
        kept = st.store.get(session.id).last_activity_at
        assert kept >= clicked - timedelta(seconds=1), (kept, clicked)
        entries = [e for e in st.store.audit(user=user, limit=50) if e.session_id == session.id and e.action == "keepalive"]
        assert len(entries) == 1 and entries[0].actor == f"user:{user}" and entries[0].reason == "keepalive", entries
        banner.wait_for(state="hidden", timeout=10_000)  # 45 s left again: outside the warning window
        _shot(page, "i02-jupyterlab-after-keep-running")
        # Nothing more: the warning comes back, then the reaper stops the session and the tab says so.
        banner.get_by_text("because it has been idle").wait_for(timeout=30_000)
        ended = st.service.wait(Actor.operator("iw-test"), session.id, {SessionStatus.STOPPED, SessionStatus.ERROR}, 90)
        assert (ended.status, ended.stop_reason) == (SessionStatus.STOPPED, "idle"), (ended.status, ended.stop_reason)
        assert (ended.stopped_at - kept).total_seconds() >= IDLE
        banner.get_by_text("This notebook has stopped").wait_for(timeout=45_000)
        link = banner.get_by_role("link", name="Back to the console")
        assert link.get_attribute("href") == st.settings.console_url
        _shot(page, "i03-jupyterlab-session-stopped")
        page.reload()
        page.get_by_text("This notebook has stopped").wait_for(timeout=15_000)
        assert page.get_by_role("link", name="Back to the console").get_attribute("href") == st.settings.console_url
        _shot(page, "i04-jupyterlab-reload-after-stop")
    finally:
        page.screenshot(path=ARTIFACTS / "i-last.png")
        context.close()
