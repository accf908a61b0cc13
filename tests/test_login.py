"""Console login: the users file, server-side logins in Redis, the signed cookie, logout, the open route,
OIDC claim mapping and the OIDC code flow against a real provider, over real HTTP (TestClient) and real Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from launcher.adapters.redis_logins import LoginStore
from launcher.adapters.redis_store import SessionStore
from launcher.errors import InvalidRequest
from launcher.models import Role, Session, SessionStatus, new_session_id, new_token
from launcher.settings import REPO_ROOT, Settings
from tests.helpers import bring_to, free_port, register_hosts, spawn, wait_for
from tests.stack import http_ok, random_instance
from ui.auth import COOKIE, ClaimsRefused, UserStore, actor_from_claims, csrf_token, login_name, resolve, sign, unsign

DEV_COOKIE_SECRET = "dev-cookie-secret-change-me"  # the old public development value


def asgi_module(monkeypatch):
    """ui.asgi, imported with a cookie key in the environment (its module-level app needs one)."""
    if "ui.asgi" not in sys.modules:
        monkeypatch.setenv("LAUNCHER_COOKIE_SECRET", secrets.token_urlsafe(32))
    return importlib.import_module("ui.asgi")


def console_settings(redis_url: str, tmp_path: Path, **overrides) -> Settings:
    values = {
        "instance": random_instance(),
        "redis_url": redis_url,
        "users_file": tmp_path / "users.json",
        "cookie_secret": secrets.token_urlsafe(32),
        "console_url": "http://testserver",
        "workspaces_dir": tmp_path / "workspaces",
        "sessions_dir": tmp_path / "sessions",
        "data_dir": tmp_path / "data",
    }
    return Settings(**{**values, **overrides})


def console_client(monkeypatch, settings: Settings, **client_kwargs) -> TestClient:
    """The console's own routes and security headers as a plain Starlette app, on real Redis."""
    asgi = asgi_module(monkeypatch)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    app = Starlette(routes=asgi.console_routes(settings, client), middleware=asgi.console_middleware())
    return TestClient(app, **client_kwargs)


def rclient(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def audit_actions(settings: Settings, user: str | None = None) -> list[str]:
    store = SessionStore(rclient(settings), settings)
    return [e.action for e in reversed(store.audit(user=user, limit=500))]


# -- the users file --------------------------------------------------------------------------------


def test_users_file_stores_argon2_hashes_and_verifies(tmp_path):
    """Passwords are stored as argon2 hashes (file mode 0600); wrong passwords, unknown and folded names fail."""
    store = UserStore(tmp_path / "users.json")
    store.set_user("alice", Role.RESEARCHER, "correct horse")
    store.set_user("kate", Role.ADMIN, "kates-password")
    raw = (tmp_path / "users.json").read_text()
    assert "correct horse" not in raw and "$argon2id$" in raw
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    assert store.verify("alice", "correct horse").role == Role.RESEARCHER
    assert store.verify(" Alice ", "correct horse").name == "alice"  # ASCII case and blanks only
    assert store.verify("alice", "wrong") is None and store.verify("nobody", "correct horse") is None
    assert store.verify("\u212aate", "kates-password") is None  # Kelvin sign: not "kate"
    assert login_name("\u212aate") is None and login_name("KATE") == "kate"
    with pytest.raises(InvalidRequest):
        store.set_user("../evil", Role.ADMIN, "long enough")
    with pytest.raises(InvalidRequest):
        store.set_user("bob", Role.ADMIN, "short")


def _users_cli(env: dict[str, str], *a: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ui.users", *a], input=stdin, text=True, capture_output=True, env=env, cwd=REPO_ROOT
    )


def test_users_cli_adds_and_changes_users(tmp_path):
    """`python -m ui.users add` creates a user and changes one's role; no Redis gives a warning, not a crash."""
    env = {
        "LAUNCHER_USERS_FILE": str(tmp_path / "u.json"),
        "LAUNCHER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "PATH": "/usr/bin:/bin",
    }
    assert (
        _users_cli(
            env, "add", "--user", "carol", "--role", "viewer", "--password-stdin", stdin="pass-word-1\n"
        ).returncode
        == 0
    )
    changed = _users_cli(env, "add", "--user", "carol", "--role", "admin", "--password-stdin", stdin="pass-word-2\n")
    assert changed.returncode == 0, changed.stderr
    assert "warning: could not end 'carol'" in changed.stderr and "Traceback" not in changed.stderr
    assert _users_cli(env, "list").stdout.strip() == "carol\tadmin"
    assert UserStore(tmp_path / "u.json").verify("carol", "pass-word-2").role == Role.ADMIN


def test_users_cli_revokes_logins_on_role_change_and_removal(redis_url, tmp_path):
    """Changing a user's role, or removing them, with `python -m ui.users` ends their logins in Redis at once."""
    settings = console_settings(redis_url, tmp_path)
    env = {**{k: v for k, v in settings.to_env().items() if v}, "PATH": "/usr/bin:/bin"}
    UserStore(settings.users_file).set_user("dora", Role.RESEARCHER, "dora-password")
    UserStore(settings.users_file).set_user("otto", Role.RESEARCHER, "otto-password")
    logins = LoginStore(rclient(settings), settings)
    first, second, other = (
        logins.create("dora", Role.RESEARCHER),
        logins.create("dora", Role.RESEARCHER),
        logins.create("otto", Role.RESEARCHER),
    )
    done = _users_cli(env, "add", "--user", "dora", "--role", "viewer", "--password-stdin", stdin="dora-password\n")
    assert done.returncode == 0, done.stderr
    assert logins.get(first) is None and logins.get(second) is None
    assert logins.get(other) is not None  # only that user's logins
    third = logins.create("dora", Role.VIEWER)
    # A removed user's report schedules go with them (they would otherwise run on for ever); others' stay.
    from launcher.adapters.redis_reports import ReportStore
    from launcher.adapters.redis_store import SessionStore
    from launcher.reports import ReportSchedule

    reports = ReportStore(SessionStore(rclient(settings), settings))
    reports.add_schedule(ReportSchedule(id="dddddddddddd", user="dora", template="t", every_s=3600), first_at=0)
    reports.add_schedule(ReportSchedule(id="oooooooooooo", user="otto", template="t", every_s=3600), first_at=0)
    assert _users_cli(env, "remove", "--user", "dora").returncode == 0
    assert logins.get(third) is None
    assert reports.schedules_for("dora") == [] and [s.id for s, _ in reports.schedules_for("otto")] == ["oooooooooooo"]
    assert audit_actions(settings, "dora") == ["logout", "logout", "report_unscheduled"]


# -- logins and the cookie -------------------------------------------------------------------------


def test_login_store_contract_for_the_entry_point(redis_url, tmp_path):
    """A login is the hash <instance>:login:<id> with user and role and a TTL; revoke deletes it, revoke_user all."""
    settings = console_settings(redis_url, tmp_path, login_ttl_s=600)
    r = rclient(settings)
    logins = LoginStore(r, settings)
    login_id = logins.create("erin", Role.RESEARCHER)
    key = f"{settings.instance}:login:{login_id}"
    assert r.type(key) == "hash" and r.hget(key, "user") == "erin" and r.hget(key, "role") == "researcher"
    assert 590 < r.ttl(key) <= 600
    record = logins.get(login_id)
    assert (record.user, record.role) == ("erin", Role.RESEARCHER) and record.created.tzinfo is not None
    with pytest.raises(AttributeError):
        record.user = "mallory"  # frozen
    assert logins.revoke(login_id) and r.exists(key) == 0 and logins.get(login_id) is None
    ids = [logins.create("erin", Role.RESEARCHER) for _ in range(3)]
    assert logins.revoke_user("erin") == 3 and all(logins.get(i) is None for i in ids)
    assert logins.get("not a login id") is None and logins.get(None) is None


def test_cookie_names_a_login_and_old_or_foreign_signatures_fail(redis_url, tmp_path):
    """The cookie is a login id plus its HMAC; tampering, another key, the old dev key or a missing login all fail."""
    settings = console_settings(redis_url, tmp_path)
    UserStore(settings.users_file).set_user("admin", Role.ADMIN, "admin-password")
    logins = LoginStore(rclient(settings), settings)
    login_id = logins.create("admin", Role.ADMIN)
    value = sign(settings, login_id)
    assert unsign(settings, value) == login_id
    assert resolve(settings, logins, {COOKIE: value}).actor.name == "admin"
    lid, mac = value.rsplit(".", 1)
    assert unsign(settings, f"{lid}.{'0' * len(mac)}") is None
    other = settings.model_copy(update={"cookie_secret": SecretStr(secrets.token_urlsafe(32))})
    assert unsign(other, value) is None
    # Forged with the old public development key: the new format, and the old {"u": "admin"} format.
    dev_mac = hmac.new(DEV_COOKIE_SECRET.encode(), (COOKIE + "\0" + login_id).encode(), hashlib.sha256).hexdigest()
    dev_new = f"{login_id}.{dev_mac}"
    payload = json.dumps({"u": "admin", "exp": 4_000_000_000}).encode()
    dev_old = (
        base64.urlsafe_b64encode(payload).decode().rstrip("=")
        + "."
        + hmac.new(DEV_COOKIE_SECRET.encode(), payload, hashlib.sha256).hexdigest()
    )
    for forged in (dev_new, dev_old, "garbage", ""):
        assert unsign(settings, forged) is None
        assert resolve(settings, logins, {COOKIE: forged}).actor is None
    # A correctly signed cookie for a login that is not (or no longer) in Redis is refused.
    ghost = secrets.token_urlsafe(32)
    assert unsign(settings, sign(settings, ghost)) == ghost
    assert resolve(settings, logins, {COOKIE: sign(settings, ghost)}).actor is None
    logins.revoke(login_id)
    assert resolve(settings, logins, {COOKIE: value}).actor is None


def test_role_is_read_each_time_and_a_weaker_role_revokes_the_login(redis_url, tmp_path):
    """A stronger role applies at once; a weaker role or a removed user revokes the login."""
    settings = console_settings(redis_url, tmp_path)
    store = UserStore(settings.users_file)
    store.set_user("dan", Role.VIEWER, "password-1")
    logins = LoginStore(rclient(settings), settings)
    cookies = {COOKIE: sign(settings, logins.create("dan", Role.VIEWER))}
    assert resolve(settings, logins, cookies).actor.role == Role.VIEWER
    store.set_user("dan", Role.ADMIN, "password-1")
    assert resolve(settings, logins, cookies).actor.role == Role.ADMIN
    store.set_user("dan", Role.RESEARCHER, "password-1")
    demoted = resolve(settings, logins, cookies)
    assert demoted.actor is None and demoted.revoked == "role_changed"
    assert resolve(settings, logins, cookies).actor is None  # gone for good, even with the role back
    cookies = {COOKIE: sign(settings, logins.create("dan", Role.RESEARCHER))}
    store.remove("dan")
    removed = resolve(settings, logins, cookies)
    assert removed.actor is None and removed.revoked == "user_removed"


# -- OIDC claim mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "user_claim", "roles_file", "expected"),
    [
        ({"sub": "alice", "roles": ["researcher"]}, "sub", None, ("alice", Role.RESEARCHER)),
        ({"sub": "root", "roles": ["viewer", "admin"]}, "sub", None, ("root", Role.ADMIN)),
        ({"sub": "eve"}, "sub", None, ("eve", Role.VIEWER)),
        ({"sub": "eve", "roles": "researcher"}, "sub", {"eve": "admin"}, ("eve", Role.ADMIN)),
        ({"sub": "Alice", "roles": ["researcher"]}, "sub", None, None),  # sub is never lower-cased
        ({"sub": "\u212aate", "roles": ["admin"]}, "sub", None, None),  # Kelvin sign is not "kate"
        ({"sub": "kate\n", "roles": ["admin"]}, "sub", None, None),
        ({"sub": "../x", "roles": ["admin"]}, "sub", None, None),
        ({"sub": 42}, "sub", None, None),
        (
            {"sub": "s1", "email": "kate@example.com", "email_verified": True},
            "email",
            None,
            ("kate@example.com", Role.VIEWER),
        ),
        ({"sub": "s1", "email": "kate@example.com"}, "email", None, None),  # unverified
        ({"sub": "s1", "email": "kate@example.com", "email_verified": "true"}, "email", None, None),
        ({"sub": "s1", "email": "Kate@Example.com", "email_verified": True}, "email", None, None),
    ],
)
def test_oidc_claims_map_strictly(unit_settings, tmp_path, claims, user_claim, roles_file, expected):
    """OIDC identities map only when the claim is already a valid ASCII user id (email verified); roles file wins."""
    settings = unit_settings.model_copy(update={"oidc_user_claim": user_claim})
    if roles_file is not None:
        (tmp_path / "roles.json").write_text(json.dumps(roles_file))
        settings = settings.model_copy(update={"roles_file": tmp_path / "roles.json"})
    if expected is None:
        with pytest.raises(ClaimsRefused):
            actor_from_claims(settings, claims)
    else:
        actor, _ = actor_from_claims(settings, claims)
        assert (actor.name, actor.role) == expected


# -- the routes over HTTP --------------------------------------------------------------------------


def test_login_logout_and_a_replayed_cookie(monkeypatch, redis_url, tmp_path):
    """POST /login makes a Redis login behind an HttpOnly Lax cookie; GET /logout does not log out; POST with the
    CSRF token does, and the copied cookie is refused afterwards."""
    settings = console_settings(redis_url, tmp_path)
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    with console_client(monkeypatch, settings) as client:
        form = client.get("/login")
        assert form.status_code == 200 and 'name="password"' in form.text and 'name="next" value="/"' in form.text
        bad = client.post("/login", data={"username": "erin", "password": "nope"}, follow_redirects=False)
        assert bad.status_code == 303 and bad.headers["location"].startswith("/login?failed=1")
        assert COOKIE not in bad.cookies
        good = client.post("/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False)
        assert good.status_code == 303 and good.headers["location"] == "/"
        header = good.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=lax" in header and "secure" not in header
        cookie = good.cookies[COOKIE]
        login_id = unsign(settings, cookie)
        logins = LoginStore(rclient(settings), settings)
        assert logins.get(login_id).user == "erin"
        assert "erin-password" not in cookie and "erin" not in cookie

        # A GET never logs out: it shows a form that POSTs with the CSRF token.
        page = client.get("/logout", follow_redirects=False)
        assert page.status_code == 200 and csrf_token(settings, login_id) in page.text and 'method="post"' in page.text
        assert logins.get(login_id) is not None
        # A POST without the token (a cross-site form) does nothing.
        forged = client.post("/logout", data={"csrf": "0" * 64}, follow_redirects=False)
        assert forged.status_code == 403 and logins.get(login_id) is not None
        out = client.post("/logout", data={"csrf": csrf_token(settings, login_id)}, follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert f'{COOKIE}=""' in out.headers["set-cookie"]
        assert logins.get(login_id) is None

    # The copy taken before logout is refused by the console (and by the entry point: the hash is gone).
    assert resolve(settings, logins, {COOKIE: cookie}).actor is None
    assert rclient(settings).exists(f"{settings.instance}:login:{login_id}") == 0
    with console_client(monkeypatch, settings, cookies={COOKIE: cookie}) as replay:
        r = replay.get("/_nbl/authorize", params={"sid": "a" * 12, "state": "s" * 43}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert audit_actions(settings, "erin") == ["login_failed", "login", "logout"]


def test_cookie_is_secure_when_the_console_is_https(monkeypatch, redis_url, tmp_path):
    """Behind https the login cookie is also Secure."""
    settings = console_settings(redis_url, tmp_path, console_url="https://console.example.org")
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    with console_client(monkeypatch, settings, base_url="https://testserver") as client:
        good = client.post("/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False)
        assert "; secure" in good.headers["set-cookie"].lower()


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("/", "/"),
        ("/_nbl/authorize?sid=abc&state=xyz", "/_nbl/authorize?sid=abc&state=xyz"),
        ("/admin", "/admin"),
        ("//evil.example.org/", "/"),
        ("/\\evil.example.org", "/"),
        ("https://evil.example.org/", "/"),
        ("javascript:alert(1)", "/"),
        ("/\x00x", "/"),
        ("/caf\u00e9", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_next_is_a_path_on_this_console(monkeypatch, candidate, expected):
    """After login the browser only ever goes to a path on the console itself."""
    assert asgi_module(monkeypatch).safe_next(candidate) == expected


def test_login_carries_next_to_the_open_route(monkeypatch, redis_url, tmp_path):
    """The form keeps `next`; a successful login goes there; an outside `next` becomes "/"."""
    settings = console_settings(redis_url, tmp_path)
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    target = "/_nbl/authorize?sid=abcdefabcdef&state=" + "s" * 43
    with console_client(monkeypatch, settings) as client:
        assert (
            'value="/_nbl/authorize?sid=abcdefabcdef&amp;state=' in client.get("/login", params={"next": target}).text
        )
        ok = client.post(
            "/login", data={"username": "erin", "password": "erin-password", "next": target}, follow_redirects=False
        )
        assert ok.headers["location"] == target
        evil = client.post(
            "/login",
            data={"username": "erin", "password": "erin-password", "next": "//evil.example.org/x"},
            follow_redirects=False,
        )
        assert evil.headers["location"] == "/"
        failed = client.post(
            "/login", data={"username": "erin", "password": "x", "next": target}, follow_redirects=False
        )
        assert parse_qs(urlsplit(failed.headers["location"]).query)["next"] == [target]


def _running_session(settings: Settings, user: str) -> Session:
    store = SessionStore(rclient(settings), settings)
    register_hosts(store, settings.host_name)
    session = Session(id=new_session_id(), user=user, template="alpha_research", token=new_token())
    session = store.reserve(session, actor=user)
    return bring_to(store, session.id, SessionStatus.RUNNING, url=settings.session_origin(session.id))


def test_authorize_route_mints_a_one_time_code_for_the_owner(monkeypatch, redis_url, tmp_path):
    """GET /_nbl/authorize: logged out goes to the login with `next`; the owner gets a code in Redis; others a page."""
    settings = console_settings(redis_url, tmp_path, public_url="http://nb.localhost:8080")
    UserStore(settings.users_file).set_user("rita", Role.RESEARCHER, "rita-password")
    UserStore(settings.users_file).set_user("ulf", Role.RESEARCHER, "ulf-password")
    session = _running_session(settings, "rita")
    state = secrets.token_urlsafe(32)
    query = {"sid": session.id, "state": state}
    with console_client(monkeypatch, settings) as client:
        anonymous = client.get("/_nbl/authorize", params=query, follow_redirects=False)
        assert anonymous.status_code == 303
        next_path = parse_qs(urlsplit(anonymous.headers["location"]).query)["next"][0]
        assert next_path == f"/_nbl/authorize?sid={session.id}&state={state}"
        login = client.post(
            "/login", data={"username": "rita", "password": "rita-password", "next": next_path}, follow_redirects=False
        )
        assert login.headers["location"] == next_path
        opened = client.get(next_path, follow_redirects=False)
        assert opened.status_code == 303
        assert opened.headers["referrer-policy"] == "no-referrer" and opened.headers["cache-control"] == "no-store"
        target = urlsplit(opened.headers["location"])
        assert f"{target.scheme}://{target.netloc}" == settings.session_origin(session.id)
        assert target.path == "/_nbl/callback"
        code = parse_qs(target.query)["code"][0]
        record = json.loads(
            rclient(settings).get(f"{settings.instance}:nbcode:{hashlib.sha256(code.encode()).hexdigest()}")
        )
        assert record["sid"] == session.id and record["user"] == "rita"
        assert record["login"] == unsign(settings, client.cookies[COOKIE])
        assert session.token.get_secret_value() not in opened.headers["location"]

    with console_client(monkeypatch, settings) as other:
        other.post("/login", data={"username": "ulf", "password": "ulf-password"}, follow_redirects=False)
        refused = other.get("/_nbl/authorize", params=query, follow_redirects=False)
        assert refused.status_code == 404 and "not one of yours" in refused.text and 'href="/"' in refused.text
        malformed = other.get("/_nbl/authorize", params={"sid": "x", "state": "y"}, follow_redirects=False)
        assert malformed.status_code == 400 and 'href="/"' in malformed.text


def test_own_routes_send_security_headers(monkeypatch, redis_url, tmp_path):
    """The login, logout and open routes send CSP with frame-ancestors, nosniff, no-referrer and no-store."""
    settings = console_settings(redis_url, tmp_path)
    with console_client(monkeypatch, settings) as client:
        for path in ("/login", "/logout", "/_nbl/authorize"):
            r = client.get(path, follow_redirects=False)
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["cache-control"] == "no-store"


def test_streamlit_pages_get_security_headers_too(monkeypatch, redis_url):
    """The real console app (Streamlit's pages and health route) also sends frame-ancestors, nosniff, no-referrer."""
    asgi = asgi_module(monkeypatch)
    with TestClient(asgi.app) as client:
        for path in ("/", "/_stcore/health"):
            r = client.get(path)
            assert r.status_code == 200, path
            assert "frame-ancestors 'self'" in r.headers["content-security-policy"], path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("secret", ["", DEV_COOKIE_SECRET])
def test_console_refuses_to_start_without_a_real_cookie_key(secret):
    """With an empty cookie key, or the old public development one, the console exits with a clear message."""
    env = {**os.environ, "LAUNCHER_COOKIE_SECRET": secret, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", "import ui.asgi"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "LAUNCHER_COOKIE_SECRET" in done.stderr and "Traceback" not in done.stderr
    if secret:
        assert secret not in done.stderr  # the message names the setting, not the value


# -- OIDC against a real provider (oidc-provider-mock), over HTTP ----------------------------------


@pytest.fixture
def oidc_provider(tmp_path):
    """A local OpenID Connect provider with a few predefined users; yields its metadata URL."""
    port = free_port()
    users = [
        {"sub": "oidc-olive", "email": "olive@example.com", "roles": ["researcher"]},
        {"sub": "\u212aate", "email": "kate@example.com", "email_verified": True, "roles": ["admin"]},
        {"sub": "s-unverified", "email": "kate@example.com", "roles": ["admin"]},
        {"sub": "s-verified", "email": "vera@example.com", "email_verified": True, "roles": ["researcher"]},
    ]
    argv = [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "oidc_provider_mock", "-H", "127.0.0.1"]
    argv += ["-p", str(port), "-n", "true"]
    for u in users:
        argv += ["--user-claims", json.dumps(u)]
    provider = spawn("oidc", argv, tmp_path / "oidc.log")
    metadata = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
    try:
        wait_for(lambda: http_ok(metadata), 30, "the OIDC provider")
        yield metadata
    finally:
        provider.stop()


def _oidc_login(client: TestClient, sub: str) -> httpx.Response:
    """Drive the code flow: /login -> provider (pick `sub`) -> /oauth2callback; returns the callback's answer."""
    start = client.get("/login", follow_redirects=False)
    assert start.status_code == 303, start.text
    chosen = httpx.post(start.headers["location"], data={"sub": sub}, follow_redirects=False, timeout=10)
    assert chosen.status_code in (302, 303), chosen.text
    back = urlsplit(chosen.headers["location"])
    assert back.path == "/oauth2callback"
    return client.get(f"{back.path}?{back.query}", follow_redirects=False)


def test_oidc_code_flow_is_strict_with_a_real_provider(monkeypatch, redis_url, tmp_path, oidc_provider):
    """The code flow ends in our own Redis login; a Kelvin-sign subject and an unverified email are refused."""
    common = {
        "auth_mode": "oidc",
        "oidc_metadata_url": oidc_provider,
        "oidc_client_id": "launcher-console",
        "oidc_client_secret": "console-secret",
    }
    settings = console_settings(redis_url, tmp_path, **common)
    logins = LoginStore(rclient(settings), settings)
    with console_client(monkeypatch, settings) as client:
        ok = _oidc_login(client, "oidc-olive")
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        login = logins.get(unsign(settings, client.cookies[COOKIE]))
        assert (login.user, login.role, login.method) == ("oidc-olive", Role.RESEARCHER, "oidc")
        # The callback URL cannot be replayed: the state was spent.
        client.cookies.clear()
    with console_client(monkeypatch, settings) as client:
        kelvin = _oidc_login(client, "\u212aate")
        assert kelvin.status_code == 403 and COOKIE not in kelvin.cookies
        assert "not a valid user id" in kelvin.text
    with console_client(monkeypatch, settings) as client:
        start = client.get("/login", follow_redirects=False)
        chosen = httpx.post(start.headers["location"], data={"sub": "oidc-olive"}, follow_redirects=False, timeout=10)
        back = urlsplit(chosen.headers["location"])
        client.cookies.clear()  # another browser, without the state cookie, cannot finish this sign-in
        stolen = client.get(f"{back.path}?{back.query}", follow_redirects=False)
        assert stolen.status_code == 400 and COOKIE not in stolen.cookies

    by_email = console_settings(redis_url, tmp_path, oidc_user_claim="email", **common)
    with console_client(monkeypatch, by_email) as client:
        unverified = _oidc_login(client, "s-unverified")
        assert unverified.status_code == 403 and "not verified" in unverified.text
    with console_client(monkeypatch, by_email) as client:
        verified = _oidc_login(client, "s-verified")
        assert verified.status_code == 303
        login = LoginStore(rclient(by_email), by_email).get(unsign(by_email, client.cookies[COOKIE]))
        assert (login.user, login.role) == ("vera@example.com", Role.RESEARCHER)
    assert audit_actions(settings) == ["login", "login_failed"]
    assert audit_actions(by_email) == ["login_failed", "login"]
