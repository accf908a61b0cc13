"""Console logins kept server-side in Redis, and the throttle on password guessing.

A console login is a random id (``secrets.token_urlsafe(32)``) naming a Redis hash; the browser's
``nbl_login`` cookie carries that id (HMAC-signed, see ``ui.auth``). Deleting the hash ends the login
everywhere at once: the console refuses the cookie, and the entry point (``launcher.adapters.redis_webauth``), which
checks ``HGET <prefix>login:<id> user`` on every request, refuses every notebook cookie minted under it.

Redis keys (``P`` is ``<instance>:``), all with a TTL:

    P login:<login id>              hash: user, role, method (password | oidc), idp_role, created
    P logins:<user>                 set of the user's login ids (for revoke_user)
    P loginfail:user:<digest>       failed password logins for one user name in the current window
    P loginfail:addr:<digest>       failed password logins from one client address
    P loginlock:user:<digest>       present while that user name is locked out (its TTL is the wait)
    P loginlock:addr:<digest>       present while that address is locked out

The contract with the entry point (do not change): ``P login:<id>`` is a hash with at least ``user``
and ``role``, has a TTL, and deleting it revokes the login.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

import redis

from launcher.models import Role
from launcher.settings import Settings

LOGIN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")

# KEYS: 1 login hash, 2 the user's index  ARGV: 1 login id, 2 ttl, 3 key prefix, 4.. field, value pairs
_CREATE = """
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[3] .. 'login:' .. id) == 0 then redis.call('SREM', KEYS[2], id) end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2])) end
return 1
"""

# KEYS: 1 the user's index  ARGV: 1 key prefix
_REVOKE_USER = """
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. 'login:' .. id)
end
redis.call('DEL', KEYS[1])
return n
"""

# KEYS: 1 login hash  ARGV: 1 key prefix, 2 login id
_REVOKE = """
local user = redis.call('HGET', KEYS[1], 'user')
local n = redis.call('DEL', KEYS[1])
if user then redis.call('SREM', ARGV[1] .. 'logins:' .. user, ARGV[2]) end
return n
"""

# KEYS: 1 login hash  ARGV: 1 role
_SET_ROLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'role', ARGV[1]) end
return 1
"""

# Before a password check: the longest lockout left (ms) for the name or the address; else take the
# name's check slot (one check at a time per name), or report a short wait when another check holds it.
# KEYS: 1 user lock, 2 address lock, 3 user busy  ARGV: 1 slot lifetime (ms)
_BEGIN = """
local wait = math.max(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]))
if wait > 0 then return wait end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[1])) then return 1000 end
return 0
"""
_BUSY_MS = 10_000  # a check that dies midway frees its slot after this long

# One failed password check, counted per user name and per address. A counter lives ``window``
# seconds from its first failure; at ``limit`` failures and beyond, each failure locks that key out for
# ``lockout * 2^(failures - limit)`` seconds (at most 64 x), and the counter outlives the lockout, so the
# next failure after the wait locks again, for longer.
# KEYS: 1 user counter, 2 user lock, 3 address counter, 4 address lock
# ARGV: 1 window, 2 user limit, 3 address limit, 4 lockout  -> the longest lock set now (0: none)
_FAIL = """
local longest = 0
local function count(counter, lock, limit)
  local n = redis.call('INCR', counter)
  if n == 1 then redis.call('EXPIRE', counter, tonumber(ARGV[1])) end
  if n >= limit then
    local wait = tonumber(ARGV[4]) * 2 ^ math.min(n - limit, 6)
    redis.call('SET', lock, '1', 'EX', math.floor(wait))
    if redis.call('TTL', counter) < wait + tonumber(ARGV[1]) then
      redis.call('EXPIRE', counter, math.floor(wait) + tonumber(ARGV[1]))
    end
    if wait > longest then longest = wait end
  end
end
count(KEYS[1], KEYS[2], tonumber(ARGV[2]))
count(KEYS[3], KEYS[4], tonumber(ARGV[3]))
return math.floor(longest)
"""


def _when(text: str) -> datetime:
    """``created`` as written by ``create`` (ISO 8601), or epoch seconds; the epoch when unreadable."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        try:
            return datetime.fromtimestamp(float(text), UTC)
        except (ValueError, OverflowError):
            return datetime.fromtimestamp(0, UTC)


def valid_login_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(LOGIN_ID_RE.fullmatch(value))


@dataclass(frozen=True)
class Login:
    """One console login as stored in Redis."""

    id: str
    user: str
    role: Role
    created: datetime
    method: str = "password"  # or "oidc"
    idp_role: Role | None = None  # OIDC: the role the provider's claims gave at login


class LoginStore:
    """Create, read and revoke console logins (``P login:<id>``) in Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        # decode_responses=True: every reply is a str; redis-py types replies as bytes | str | None.
        self._r: Any = client
        self.settings = settings
        self.prefix = f"{settings.instance}:"
        self._create = client.register_script(_CREATE)
        self._revoke = client.register_script(_REVOKE)
        self._revoke_user = client.register_script(_REVOKE_USER)
        self._set_role = client.register_script(_SET_ROLE)

    def _key(self, login_id: str) -> str:
        return f"{self.prefix}login:{login_id}"

    def _index(self, user: str) -> str:
        return f"{self.prefix}logins:{user}"

    def create(self, user: str, role: Role, *, method: str = "password", idp_role: Role | None = None) -> str:
        """A new login for ``user`` lasting ``settings.login_ttl_s``; returns its id (the cookie's content)."""
        login_id = secrets.token_urlsafe(32)
        fields = {
            "user": user,
            "role": Role(role).value,
            "method": method,
            "idp_role": idp_role.value if idp_role else "",
            "created": datetime.now(UTC).isoformat(),
        }
        pairs = [item for pair in fields.items() for item in pair]
        self._create(
            keys=[self._key(login_id), self._index(user)],
            args=[login_id, self.settings.login_ttl_s, self.prefix, *pairs],
        )
        return login_id

    def get(self, login_id: str | None) -> Login | None:
        """The login, or None when the id is malformed, unknown, expired or revoked."""
        if not valid_login_id(login_id):
            return None
        data = self._r.hgetall(self._key(login_id))
        try:
            return Login(
                id=login_id,
                user=data["user"],
                role=Role(data["role"]),
                created=_when(data.get("created", "")),
                method=data.get("method") or "password",
                idp_role=Role(data["idp_role"]) if data.get("idp_role") else None,
            )
        except (KeyError, ValueError):
            return None

    def set_role(self, login_id: str, role: Role) -> None:
        """Record a stronger role on a live login (a weaker one revokes it instead: see ``ui.auth``)."""
        # Only while the login still exists: an HSET on a revoked login would recreate it without a TTL.
        self._set_role(keys=[self._key(login_id)], args=[Role(role).value])

    def revoke(self, login_id: str | None) -> bool:
        """End one login (logout). True when it existed."""
        if not valid_login_id(login_id):
            return False
        return bool(self._revoke(keys=[self._key(login_id)], args=[self.prefix, login_id]))

    def revoke_user(self, user: str) -> int:
        """End every login of ``user`` (role changed, user removed); returns how many there were."""
        return int(self._revoke_user(keys=[self._index(user)], args=[self.prefix]))


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class LoginThrottle:
    """Bounds password guessing per user name and per client address (state in Redis, shared by consoles).

    ``begin`` before each password check: it refuses while either is locked out, and lets one check at a
    time run per user name (so a burst of parallel guesses cannot slip past the count); then exactly one
    of ``failed`` or ``succeeded`` (or ``release``).
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        # decode_responses=True: every reply is a str; redis-py types replies as bytes | str | None.
        self._r: Any = client
        self.settings = settings
        self.prefix = f"{settings.instance}:"
        self._begin = client.register_script(_BEGIN)
        self._fail = client.register_script(_FAIL)

    def _keys(self, user: str, address: str) -> list[str]:
        u, a = _digest(user), _digest(address)
        p = self.prefix
        return [
            f"{p}loginfail:user:{u}",
            f"{p}loginlock:user:{u}",
            f"{p}loginfail:addr:{a}",
            f"{p}loginlock:addr:{a}",
            f"{p}loginbusy:user:{u}",
        ]

    def begin(self, user: str, address: str) -> int:
        """0 when this user name and address may try now (the check slot is held); else seconds to wait."""
        keys = self._keys(user, address)
        wait_ms = int(self._begin(keys=[keys[1], keys[3], keys[4]], args=[_BUSY_MS]))
        return 0 if wait_ms <= 0 else -(-wait_ms // 1000)  # round up: "try again in N s" is never too early

    def failed(self, user: str, address: str) -> int:
        """Count one failed password check; returns the lockout it started, in seconds (0: none)."""
        s = self.settings
        keys = self._keys(user, address)
        locked = self._fail(
            keys=keys[:4],
            args=[s.login_throttle_window_s, s.login_throttle_limit, s.login_throttle_address_limit, s.login_lockout_s],
        )
        self.release(user)
        return int(locked)

    def succeeded(self, user: str, address: str) -> None:
        """Forget the user name's failures (not the address's: one valid account must not reset a guesser)."""
        keys = self._keys(user, address)
        self._r.delete(keys[0], keys[4])

    def release(self, user: str) -> None:
        self._r.delete(self._keys(user, "")[4])
