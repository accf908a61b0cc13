"""The entry point's authorization, against the real nginx, authorizer and Redis (no Docker needed).

A capture server of the test's own stands where a session's Jupyter socket would be, so the test
sees exactly what reaches a notebook.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
import redis
import websocket

from launcher.adapters.authorizer import Request, cross_origin_refusal, parse_cookies
from launcher.adapters.redis_store import SessionStore
from launcher.models import Actor, Role, Session, SessionStatus, new_session_id, new_token
from launcher.settings import Settings
from tests.helpers import bring_to, free_port, register_hosts, wait_for
from tests.stack import random_instance, start_entrypoint
from tests.web import OriginClient, make_login
from workers import hostfs

OWN = "http://abcdefabcdef.nb.localhost:8080"


def req(**kw) -> Request:
    base = dict(sid="abcdefabcdef", method="GET", origin=None, fetch_site=None, fetch_mode=None, fetch_dest=None)
    return Request(**{**base, "upgrade": False, "cookies": {}, **kw})


@pytest.mark.parametrize(
    ("request_", "refused"),
    [
        (req(), False),  # a script or an old browser: no Origin, no fetch metadata
        (req(fetch_site="same-origin", fetch_mode="cors", fetch_dest="empty"), False),  # JupyterLab's own fetch
        (req(method="POST", origin=OWN, fetch_site="same-origin"), False),
        (req(fetch_site="none", fetch_mode="navigate", fetch_dest="document"), False),  # typed in the address bar
        (req(fetch_site="cross-site", fetch_mode="navigate", fetch_dest="document"), False),  # from the console
        (req(fetch_site="same-site", fetch_mode="navigate", fetch_dest="document"), False),  # a link in a sibling
        (req(upgrade=True, origin=OWN), False),
        (req(upgrade=True, origin="http://zzzzzzzzzzzz.nb.localhost:8080"), True),  # a sibling's kernel socket
        (req(upgrade=True), True),  # a WebSocket without an Origin
        (req(method="POST", origin="http://zzzzzzzzzzzz.nb.localhost:8080", fetch_site="same-site"), True),
        (req(method="POST"), True),  # a state change without an Origin
        (req(method="DELETE", origin="null"), True),
        (req(origin="http://evil.example", fetch_site="cross-site", fetch_mode="cors", fetch_dest="empty"), True),
        (req(fetch_site="same-site", fetch_mode="no-cors", fetch_dest="image"), True),  # <img> from a sibling
        (req(fetch_site="same-site", fetch_mode="navigate", fetch_dest="iframe"), True),  # framed by a sibling
        (req(method="POST", fetch_site="same-site", fetch_mode="navigate", fetch_dest="document"), True),  # a form
    ],
)
def test_cross_origin_rules(request_, refused):
    """Only the session's own origin may change state or open WebSockets; others may only navigate to it."""
    assert (cross_origin_refusal(request_, OWN) is not None) is refused


def test_cookie_parsing_keeps_the_first_of_each_name():
    """A cookie tossed at the parent domain cannot replace an earlier one of the same name."""
    assert parse_cookies("a=1; __Host-nbl=x; __Host-nbl=y; b") == {"a": "1", "__Host-nbl": "x"}


class _Capture(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def _answer(self) -> None:
        _Capture.seen.append(
            {"method": self.command, "path": self.path, **{k.lower(): v for k, v in self.headers.items()}}
        )
        big = self.path.startswith(("/static/", "/api/big", "/lab/extensions/"))
        body = (b"var x = 1;\n" * 2000) if big else json.dumps({"ok": True}).encode()
        if self.path.startswith("/lab/api/settings"):  # JupyterLab's settings: large JSON
            body = json.dumps({"settings": [{"schema": "x" * 100}] * 100}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/javascript" if big else "application/json")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


class _UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)

    def get_request(self):
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


@pytest.fixture(scope="module")
def entry(redis_url, workdir):
    """nginx + authorizer of our own, a running session record, and a capture server as its 'Jupyter'."""
    base = workdir / "entry"  # under /tmp, traversable: nginx's workers are not root
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
    )
    store = SessionStore.from_settings(settings)
    register_hosts(store, settings.host_name)
    session = Session(id=new_session_id(), user="ep-alice", template="alpha_research", token=new_token())
    session = store.reserve(session, actor="test")
    secret = session.token.get_secret_value()
    bring_to(store, session.id, SessionStatus.STARTING)
    hostfs.prepare_rundir(settings, session.id, secret)
    sock = hostfs.socket_path(settings, session.id)
    server = _UnixHTTPServer(str(sock), _Capture)
    os.chown(sock, settings.notebook_uid, settings.proxy_gid)
    hostfs.lock_socket(settings, session.id)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bring_to(store, session.id, SessionStatus.RUNNING, url=settings.session_origin(session.id))
    proc = start_entrypoint(settings, base / "nginx")
    yield settings, store, session, secret
    proc.stop()
    server.shutdown()
    server.server_close()
    store.redis.close()


def _opened(settings: Settings, client: redis.Redis, session: Session) -> tuple[OriginClient, str]:
    login = make_login(client, settings, session.user)
    browser = OriginClient(settings, session.id)
    browser.open(client, login, Actor(name=session.user, role=Role.RESEARCHER))
    return browser, login


def test_a_notebook_receives_only_its_xsrf_cookie_and_the_secret_nginx_adds(entry):
    """Console cookies, a sibling's tossed cookies, the origin's own login cookie and a forged secret or
    token never reach the notebook: it sees only ``_xsrf`` and the secret the entry point adds."""
    settings, store, session, secret = entry
    browser, _ = _opened(settings, store.redis, session)
    _Capture.seen.clear()
    login_cookie = browser.cookies["__Host-nbl"]
    r = browser.get(
        "/api/contents",
        headers={
            "Cookie": f"nbl_login=console-cookie; __Host-nbl={login_cookie}; _xsrf=abc; tossed=by-a-sibling",
            "Authorization": "token forged",
            "X-Nbl-Auth": "forged",
        },
    )
    assert r.status_code == 200, r.text
    [seen] = _Capture.seen
    assert seen["cookie"] == "_xsrf=abc"
    assert seen["x-nbl-auth"] == secret
    assert "authorization" not in seen
    assert login_cookie not in json.dumps(seen)
    assert secret not in r.text and secret not in str(r.headers)
    browser.close()


def test_no_cookie_no_entry_and_a_forged_secret_does_not_help(entry):
    """Without the origin's cookie every request is sent to the open flow; a client-supplied secret is ignored."""
    settings, _, session, secret = entry
    stranger = OriginClient(settings, session.id)
    _Capture.seen.clear()
    for headers in ({}, {"X-Nbl-Auth": secret}, {"Authorization": f"token {secret}"}):
        r = stranger.get("/api/contents", headers=headers)
        assert r.status_code == 302 and r.headers["location"] == "/_nbl/start", r.status_code
    assert _Capture.seen == []
    stranger.close()


def test_requests_from_other_origins_are_refused_before_the_notebook(entry):
    """A sibling session's page, holding the victim's Lax cookie, can neither change state nor open a socket."""
    settings, store, session, _ = entry
    browser, _ = _opened(settings, store.redis, session)
    sibling = "http://zzzzzzzzzzzz." + settings.public_url.split("://", 1)[1]
    _Capture.seen.clear()
    post = browser.post(
        "/api/contents", json={"type": "file"}, headers={"Origin": sibling, "Sec-Fetch-Site": "same-site"}
    )
    assert post.status_code == 403
    read = browser.get("/api/contents", headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"})
    assert read.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f"ws://{browser.base.split('://', 1)[1]}/api/kernels/x/channels",
            host=browser.host,
            origin=sibling,
            cookie=browser.cookie_header(),
            timeout=10,
        )
    assert refused.value.status_code == 403
    assert _Capture.seen == []
    nav = browser.get(
        "/lab", headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    )
    assert nav.status_code == 200
    browser.close()


def test_logout_revokes_every_notebook_cookie_within_a_second(entry):
    """Deleting the console login (logout, role change) refuses the notebook's cookie within the cache bound."""
    settings, store, session, _ = entry
    browser, login = _opened(settings, store.redis, session)
    assert browser.get("/api/status").status_code == 200
    store.redis.delete(f"{settings.instance}:login:{login}")
    wait_for(lambda: browser.get("/api/status").status_code == 403, 3, "the revocation")
    page = browser.get("/lab")
    assert page.status_code == 403 and "Back to the console" in page.text
    browser.close()


def test_a_cookie_for_one_session_does_not_open_another(entry, redis_url):
    """A session origin's cookie is worthless on any other session origin, even replayed by hand."""
    settings, store, session, _ = entry
    browser, _ = _opened(settings, store.redis, session)
    other = OriginClient(settings, new_session_id())
    other.cookies["__Host-nbl"] = browser.cookies["__Host-nbl"]
    assert other.get("/api/status").status_code == 302  # no login there: back to the open flow
    browser.close()
    other.close()


def test_the_open_code_is_refused_for_others_and_for_stopped_sessions(entry):
    """The console mints a code only for the running session's owner holding LAUNCH_NOTEBOOKS."""
    from launcher.adapters.redis_webauth import EntryAuth
    from launcher.errors import InvalidRequest, NotFound, PermissionDenied

    settings, store, session, _ = entry
    auth = EntryAuth(store.redis, settings)
    state = "s" * 43
    with pytest.raises(NotFound):
        auth.issue_code(
            login_id="x", actor=Actor(name="ep-bob", role=Role.RESEARCHER), session_id=session.id, state=state
        )
    with pytest.raises(NotFound):  # admins manage sessions; they do not get into other people's notebooks
        auth.issue_code(login_id="x", actor=Actor(name="ep-root", role=Role.ADMIN), session_id=session.id, state=state)
    with pytest.raises(PermissionDenied):
        auth.issue_code(
            login_id="x", actor=Actor(name="ep-alice", role=Role.VIEWER), session_id=session.id, state=state
        )
    with pytest.raises(InvalidRequest):
        auth.issue_code(
            login_id="x", actor=Actor(name="ep-alice", role=Role.RESEARCHER), session_id="../x", state=state
        )
    with pytest.raises(InvalidRequest):
        auth.issue_code(
            login_id="x", actor=Actor(name="ep-alice", role=Role.RESEARCHER), session_id=session.id, state=""
        )


def test_refusals_and_settings_paths(entry):
    """Unknown hosts get 404 from the default server; internal paths are not reachable from outside."""
    settings, _, session, _ = entry
    client = OriginClient(settings, session.id)
    assert client.get("/_nbl_auth").status_code in (302, 404)  # internal: nginx never routes it from outside
    assert client.get("/_nbl/anything").status_code == 404
    client.host = "not-a-session.example"
    assert client.get("/lab").status_code == 404
    client.close()
    assert Path(settings.sessions_dir).stat().st_mode & 0o777 == 0o711


def _wildcard_certificate(folder: Path, domain: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``domain`` and ``*.domain`` (openssl), as a deployment would buy."""
    cert, key = folder / "wildcard.crt", folder / "wildcard.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN=*.{domain}",
            "-addext", f"subjectAltName=DNS:*.{domain},DNS:{domain}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_with_a_wildcard_certificate(entry, workdir):
    """With a wildcard certificate the entry point serves session origins over https only, and the open
    flow and the notebook work through it with the certificate verified against the session's host name."""
    settings, store, session, secret = entry
    folder = workdir / "tls"
    folder.mkdir(mode=0o755)
    cert, key = _wildcard_certificate(folder, "nb.localhost")
    port = free_port()
    tls = settings.model_copy(
        update={
            "public_url": f"https://nb.localhost:{port}",
            "entrypoint_listen": f"127.0.0.1:{port}",
            "entrypoint_tls_cert": cert,
            "entrypoint_tls_key": key,
        }
    )
    proc = start_entrypoint(tls, folder / "nginx", health_scheme="https")
    try:
        browser = OriginClient(tls, session.id, verify=ssl.create_default_context(cafile=str(cert)))
        browser.open(
            store.redis, make_login(store.redis, tls, session.user), Actor(name=session.user, role=Role.RESEARCHER)
        )
        _Capture.seen.clear()
        r = browser.get("/api/status")
        assert r.status_code == 200 and r.headers["strict-transport-security"].startswith("max-age=")
        assert _Capture.seen[-1]["x-nbl-auth"] == secret and _Capture.seen[-1]["x-forwarded-proto"] == "https"
        browser.close()
        with pytest.raises(httpx.ConnectError):  # a name the certificate does not cover is refused
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ssl.create_default_context(cafile=str(cert)))
        plain = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert plain.status_code == 400  # plain HTTP on the TLS port gets nginx's refusal, nothing else
    finally:
        proc.stop()



def test_static_assets_are_compressed_and_cached_and_nothing_else_is(entry):
    """JupyterLab's assets come gzip-compressed with a day of private browser caching, its extensions' files
    compressed; API answers are never compressed (no compression oracle beside secrets) and keep their own caching headers."""
    settings, store, session, _ = entry
    browser, _ = _opened(settings, store.redis, session)
    static = browser.get("/static/lab/main.0123456789abcdef0123.js", headers={"Accept-Encoding": "gzip"})
    assert static.status_code == 200 and static.headers["content-encoding"] == "gzip"
    assert static.headers["cache-control"] == "private, max-age=86400"
    assert static.headers["x-content-type-options"] == "nosniff" and static.headers["referrer-policy"] == "no-referrer"
    # The JupyterLab extensions' own files (the image's; each session serves them): compressed, their caching kept.
    extension = browser.get("/lab/extensions/nbl-x/static/remoteEntry.js?v=1", headers={"Accept-Encoding": "gzip"})
    assert extension.status_code == 200 and extension.headers["content-encoding"] == "gzip"
    assert extension.headers["cache-control"] == "no-cache"
    api = browser.get("/api/big", headers={"Accept-Encoding": "gzip"})
    assert api.status_code == 200 and "content-encoding" not in api.headers
    assert api.headers["cache-control"] == "no-cache"
    # JupyterLab's settings (no secret in them, 140 KB at every load) are compressed, behind the same checks.
    lab_settings = browser.get("/lab/api/settings?ids_only=true", headers={"Accept-Encoding": "gzip"})
    assert lab_settings.status_code == 200 and lab_settings.headers["content-encoding"] == "gzip"
    assert lab_settings.json()["settings"][0]["schema"] == "x" * 100
    stranger = OriginClient(settings, session.id)
    assert stranger.get("/lab/api/settings", headers={"Accept-Encoding": "gzip"}).status_code in (302, 401, 403)
    stranger.close()
    browser.close()
