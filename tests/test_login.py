"""Password login: the users file, the signed cookie, and the login routes over real HTTP (TestClient)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from launcher.errors import InvalidRequest
from launcher.models import Role
from launcher.settings import REPO_ROOT
from ui.auth import COOKIE, UserStore, actor_from_claims, actor_from_cookie, sign, unsign


def test_users_file_stores_argon2_hashes_and_verifies(tmp_path):
    """Passwords are stored as argon2 hashes (file mode 0600); wrong passwords and unknown users fail."""
    store = UserStore(tmp_path / "users.json")
    store.set_user("alice", Role.RESEARCHER, "correct horse")
    raw = (tmp_path / "users.json").read_text()
    assert "correct horse" not in raw and "$argon2id$" in raw
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    assert store.verify("alice", "correct horse").role == Role.RESEARCHER
    assert store.verify("alice", "wrong") is None and store.verify("nobody", "correct horse") is None
    with pytest.raises(InvalidRequest):
        store.set_user("../evil", Role.ADMIN, "long enough")
    with pytest.raises(InvalidRequest):
        store.set_user("bob", Role.ADMIN, "short")


def test_users_cli_adds_and_changes_users(tmp_path):
    """`python -m ui.users add` creates a user and changes an existing one's role."""
    env = {"LAUNCHER_USERS_FILE": str(tmp_path / "u.json"), "PATH": "/usr/bin:/bin"}

    def run(*a: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ui.users", *a], input=stdin, text=True, capture_output=True, env=env, cwd=REPO_ROOT
        )

    assert run("add", "--user", "carol", "--role", "viewer", "--password-stdin", stdin="pass-word-1\n").returncode == 0
    assert run("add", "--user", "carol", "--role", "admin", "--password-stdin", stdin="pass-word-2\n").returncode == 0
    assert run("list").stdout.strip() == "carol\tadmin"
    assert UserStore(tmp_path / "u.json").verify("carol", "pass-word-2").role == Role.ADMIN


def test_cookie_signature_expiry_and_tampering(unit_settings):
    """A cookie names its user only while its signature holds and it has not expired."""
    value = sign(unit_settings, "alice", now=1000)
    assert unsign(unit_settings, value, now=1001) == "alice"
    assert unsign(unit_settings, value, now=1000 + unit_settings.login_ttl_s + 1) is None
    body, mac = value.rsplit(".", 1)
    assert unsign(unit_settings, f"{body}.{'0' * len(mac)}", now=1001) is None
    other = unit_settings.model_copy(update={"cookie_secret": SecretStr("another-secret")})
    assert unsign(other, value, now=1001) is None
    assert unsign(unit_settings, "garbage", now=1) is None and unsign(unit_settings, None) is None


def test_role_comes_from_the_users_file_each_time(unit_settings, tmp_path):
    """Changing a user's role, or removing them, applies to an existing cookie at once."""
    settings = unit_settings.model_copy(update={"users_file": tmp_path / "users.json"})
    store = UserStore(settings.users_file)
    store.set_user("dan", Role.RESEARCHER, "password-1")
    cookies = {COOKIE: sign(settings, "dan")}
    assert actor_from_cookie(settings, cookies).role == Role.RESEARCHER
    store.set_user("dan", Role.VIEWER, "password-1")
    assert actor_from_cookie(settings, cookies).role == Role.VIEWER
    store.remove("dan")
    assert actor_from_cookie(settings, cookies) is None


@pytest.mark.parametrize(
    ("claims", "roles_file", "expected"),
    [
        ({"is_logged_in": True, "sub": "Alice", "roles": ["researcher"]}, None, ("alice", Role.RESEARCHER)),
        ({"is_logged_in": True, "sub": "root", "roles": ["viewer", "admin"]}, None, ("root", Role.ADMIN)),
        ({"is_logged_in": True, "sub": "eve"}, None, ("eve", Role.VIEWER)),
        ({"is_logged_in": True, "sub": "eve", "roles": "researcher"}, {"eve": "admin"}, ("eve", Role.ADMIN)),
        ({"is_logged_in": True, "sub": "../x", "roles": ["admin"]}, None, None),
        ({"is_logged_in": False, "sub": "alice"}, None, None),
        ({"is_logged_in": True, "sub": "alice", "roles": ["admin"], "exp": 5}, None, None),
    ],
)
def test_oidc_claims_map_to_actors(unit_settings, tmp_path, claims, roles_file, expected):
    """OIDC identities map to a valid user id and the strongest role; the roles file wins; expired is out."""
    settings = unit_settings
    if roles_file is not None:
        (tmp_path / "roles.json").write_text(json.dumps(roles_file))
        settings = settings.model_copy(update={"roles_file": tmp_path / "roles.json"})
    actor = actor_from_claims(settings, claims, now=100)
    assert (actor.name, actor.role) == expected if expected else actor is None


def test_login_routes_set_an_httponly_cookie(tmp_path, monkeypatch):
    """POST /login with the right password sets a signed HttpOnly SameSite=Lax cookie; a wrong one does not."""
    monkeypatch.setenv("LAUNCHER_USERS_FILE", str(tmp_path / "users.json"))
    UserStore(tmp_path / "users.json").set_user("erin", Role.RESEARCHER, "erin-password")
    sys.modules.pop("ui.asgi", None)
    asgi = importlib.import_module("ui.asgi")
    with TestClient(asgi.app) as client:
        form = client.get("/login")
        assert form.status_code == 200 and 'name="password"' in form.text
        bad = client.post("/login", data={"username": "erin", "password": "nope"}, follow_redirects=False)
        assert bad.status_code == 303 and bad.headers["location"] == "/login?failed=1"
        assert COOKIE not in bad.cookies
        good = client.post("/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False)
        assert good.status_code == 303 and good.headers["location"] == "/"
        header = good.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=lax" in header
        assert unsign(asgi.settings, good.cookies[COOKIE]) == "erin"
        out = client.get("/logout", follow_redirects=False)
        assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
