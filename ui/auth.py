"""Who is using the console: a users file with argon2 hashes (default) or OpenID Connect.

Either way a login ends in a server-side console login in Redis (``launcher.adapters.redis_logins``): the browser's
``nbl_login`` cookie (HttpOnly, SameSite=Lax, HMAC-signed with ``LAUNCHER_COOKIE_SECRET``) carries only
the login's random id. The role is read again on every request (the users file in password mode, the
roles file in OIDC mode); when it no longer grants what the login had, or the user is gone, the login
is revoked. Logging out deletes the login, so a copied cookie dies with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from launcher.adapters.redis_logins import Login, LoginStore, valid_login_id
from launcher.errors import InvalidRequest
from launcher.models import Actor, Role
from launcher.rbac import ROLE_PERMISSIONS
from launcher.settings import Settings
from launcher.validation import USER_ID_RE, validate_user_id

COOKIE = "nbl_login"
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser")
_ROLE_STRENGTH = [Role.ADMIN, Role.RESEARCHER, Role.VIEWER]


def login_name(raw: object) -> str | None:
    """The user id a typed login name stands for: surrounding blanks dropped and ASCII lower-cased.

    No Unicode folding: a name that is not ASCII is no user id at all (``"\\u212aate"``, with a Kelvin
    sign, is not ``kate``). None when the result is not a valid user id.
    """
    if not isinstance(raw, str) or not raw.isascii():
        return None
    name = raw.strip().lower()
    return name if USER_ID_RE.fullmatch(name) and ".." not in name else None


def shown_name(raw: object, limit: int = 64) -> str:
    """A user name as it may appear in a log line: ASCII, quoted, escaped, bounded."""
    return ascii(str(raw)[:limit])


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
        """The actor when the password matches; None otherwise (the same argon2 work either way)."""
        name = login_name(user)
        entry = self._load().get(name) if name else None
        try:
            _hasher.verify(entry["password_hash"] if entry else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return Actor(name=name, role=Role(entry["role"])) if entry and name else None

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


# -- the login cookie and the logout CSRF token ------------------------------------------------


def _mac(secret: str, purpose: str, login_id: str) -> str:
    return hmac.new(secret.encode(), f"{purpose}\0{login_id}".encode(), hashlib.sha256).hexdigest()


def sign(settings: Settings, login_id: str) -> str:
    """The cookie value for a login: its id and an HMAC of it (the login itself lives in Redis)."""
    return f"{login_id}.{_mac(settings.cookie_secret.get_secret_value(), COOKIE, login_id)}"


def unsign(settings: Settings, value: str | None) -> str | None:
    """The login id a cookie names when its signature holds; None for anything else.

    A valid signature is not enough to be logged in: the login must also exist in Redis.
    """
    if not value or not isinstance(value, str) or len(value) > 200 or "." not in value:
        return None
    login_id, mac = value.rsplit(".", 1)
    if not valid_login_id(login_id):
        return None
    expected = _mac(settings.cookie_secret.get_secret_value(), COOKIE, login_id)
    return login_id if hmac.compare_digest(mac, expected) else None


def csrf_token(settings: Settings, login_id: str) -> str:
    """The token a logout form must carry: derived from the login, so it dies with it."""
    return _mac(settings.cookie_secret.get_secret_value(), "logout", login_id)


def csrf_ok(settings: Settings, login_id: str, token: object) -> bool:
    return isinstance(token, str) and hmac.compare_digest(token, csrf_token(settings, login_id))


# -- who is asking, on every request ---------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """The outcome of reading a login cookie: the login and actor, or why a login was just revoked."""

    login: Login | None = None
    actor: Actor | None = None
    revoked: str = ""  # "role_changed" or "user_removed" when this check revoked the login


def _weaker(role: Role, than: Role) -> bool:
    return not ROLE_PERMISSIONS[role] >= ROLE_PERMISSIONS[than]


def roles_file_role(settings: Settings, user: str) -> Role | None:
    if settings.roles_file is None or not settings.roles_file.exists():
        return None
    mapped = json.loads(settings.roles_file.read_text()).get(user)
    return Role(mapped) if mapped in Role.__members__.values() else None


def current_role(settings: Settings, login: Login) -> Role | None:
    """The role the user holds now: the users file (password), else the roles file or the provider's claims."""
    if login.method == "password":
        return UserStore(settings.users_file).role_of(login.user)
    return roles_file_role(settings, login.user) or login.idp_role or Role.VIEWER


def resolve(settings: Settings, logins: LoginStore, cookies: Mapping[str, str]) -> Resolved:
    """The login and actor behind a request's cookies, checked against Redis and the role source now."""
    login = logins.get(unsign(settings, cookies.get(COOKIE)))
    if login is None:
        return Resolved()
    if login.method != ("oidc" if settings.auth_mode == "oidc" else "password"):
        return Resolved()  # a login made under the other mode does not count here
    role = current_role(settings, login)
    if role is None or _weaker(role, login.role):
        logins.revoke(login.id)
        return Resolved(login=login, revoked="user_removed" if role is None else "role_changed")
    if role != login.role:
        logins.set_role(login.id, role)
    return Resolved(login=login, actor=Actor(name=login.user, role=role))


# -- OIDC ------------------------------------------------------------------------------------------


class ClaimsRefused(Exception):
    """The provider's identity does not map to a user id; ``args[0]`` says why (no secret in it)."""


def actor_from_claims(settings: Settings, claims: Mapping[str, Any]) -> tuple[Actor, Role | None]:
    """Map validated ID-token claims to (actor, the role the claims gave); ``ClaimsRefused`` otherwise.

    Strict: the user claim must already be a valid ASCII user id (no lower-casing, no Unicode folding,
    ``sub`` used as is); when the user claim is ``email``, ``email_verified`` must be true.
    """
    claim = settings.oidc_user_claim
    raw = claims.get(claim)
    if not isinstance(raw, str) or not raw.isascii() or not USER_ID_RE.fullmatch(raw) or ".." in raw:
        raise ClaimsRefused(f"the {claim!r} claim is not a valid user id")
    if claim == "email" and claims.get("email_verified") is not True:
        raise ClaimsRefused("the provider has not verified this email address")
    claimed = claims.get(settings.oidc_roles_claim) or []
    claimed = [claimed] if isinstance(claimed, str) else list(claimed) if isinstance(claimed, list | tuple) else []
    idp_role = next((r for r in _ROLE_STRENGTH if r.value in claimed), None)
    role = roles_file_role(settings, raw) or idp_role or Role.VIEWER
    return Actor(name=raw, role=role), idp_role
