"""Who is using the console: a users file with argon2 hashes (default) or OpenID Connect.

The password login is a plain form route (``ui.asgi``) that sets a signed, HttpOnly, SameSite=Lax
cookie naming the user; the role is read from the users file on every request, so a role change
or a removed user takes effect at once. In OIDC mode the identity and roles come from ``st.user``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from launcher.errors import InvalidRequest
from launcher.models import Actor, Role
from launcher.settings import Settings
from launcher.validation import validate_user_id

COOKIE = "nbl_login"
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser")
_ROLE_STRENGTH = [Role.ADMIN, Role.RESEARCHER, Role.VIEWER]


class UserStore:
    """``{"users": {"alice": {"role": "researcher", "password_hash": "$argon2id$..."}}}``"""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.path.read_text()).get("users", {})
        except FileNotFoundError:
            return {}

    def roles(self) -> dict[str, Role]:
        return {name: Role(entry["role"]) for name, entry in sorted(self._load().items())}

    def role_of(self, user: str) -> Role | None:
        entry = self._load().get(user)
        return Role(entry["role"]) if entry else None

    def verify(self, user: str, password: str) -> Actor | None:
        """The actor when the password matches; None otherwise (same work either way)."""
        entry = self._load().get(user.strip().lower())
        try:
            _hasher.verify(entry["password_hash"] if entry else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return Actor(name=user.strip().lower(), role=Role(entry["role"])) if entry else None

    def set_user(self, user: str, role: Role, password: str) -> None:
        user = validate_user_id(user)
        if len(password) < 8:
            raise InvalidRequest("a password needs at least 8 characters")
        users = self._load()
        users[user] = {"role": Role(role).value, "password_hash": _hasher.hash(password)}
        self._write(users)

    def remove(self, user: str) -> bool:
        users = self._load()
        found = users.pop(user, None) is not None
        self._write(users)
        return found

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".users-")
        with os.fdopen(fd, "w") as out:
            json.dump({"users": users}, out, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


# -- the login cookie --------------------------------------------------------------------------


def _mac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def sign(settings: Settings, user: str, now: float | None = None) -> str:
    payload = json.dumps({"u": user, "exp": int((now or time.time()) + settings.login_ttl_s)}).encode()
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{body}.{_mac(settings.cookie_secret.get_secret_value(), payload)}"


def unsign(settings: Settings, value: str | None, now: float | None = None) -> str | None:
    """The user named by a valid, unexpired cookie; None for anything else."""
    if not value or "." not in value:
        return None
    body, mac = value.rsplit(".", 1)
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(mac, _mac(settings.cookie_secret.get_secret_value(), payload)):
        return None
    if not isinstance(data, dict) or data.get("exp", 0) < (now or time.time()):
        return None
    user = data.get("u")
    return user if isinstance(user, str) else None


def actor_from_cookie(settings: Settings, cookies: Mapping[str, str]) -> Actor | None:
    user = unsign(settings, cookies.get(COOKIE))
    if user is None:
        return None
    role = UserStore(settings.users_file).role_of(user)
    return Actor(name=user, role=role) if role else None


# -- OIDC ------------------------------------------------------------------------------------------


def actor_from_claims(settings: Settings, claims: Mapping[str, Any], now: float | None = None) -> Actor | None:
    """Map an OIDC identity to an actor: user id from a claim, role from the roles file or a claim."""
    if not claims.get("is_logged_in"):
        return None
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp < (now or time.time()):
        return None
    raw = str(claims.get(settings.oidc_user_claim) or "").strip().lower()
    try:
        user = validate_user_id(raw)
    except InvalidRequest:
        return None
    role: Role | None = None
    if settings.roles_file is not None and settings.roles_file.exists():
        mapped = json.loads(settings.roles_file.read_text()).get(user)
        role = Role(mapped) if mapped in Role.__members__.values() else None
    if role is None:
        claimed = claims.get(settings.oidc_roles_claim) or []
        claimed = [claimed] if isinstance(claimed, str) else list(claimed)
        role = next((r for r in _ROLE_STRENGTH if r.value in claimed), None)
    return Actor(name=user, role=role or Role.VIEWER)


def oidc_secrets(settings: Settings) -> dict[str, Any] | None:
    """The ``[auth]`` secrets Streamlit's native login needs, built from settings."""
    if settings.auth_mode != "oidc":
        return None
    return {
        "auth": {
            "redirect_uri": settings.console_url.rstrip("/") + "/oauth2callback",
            "cookie_secret": settings.cookie_secret.get_secret_value(),
            "client_id": settings.oidc_client_id,
            "client_secret": settings.oidc_client_secret.get_secret_value(),
            "server_metadata_url": settings.oidc_metadata_url,
        }
    }
