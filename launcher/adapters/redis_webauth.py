"""Opening a notebook in the browser without the browser ever holding its Jupyter token.

Each session is served on its own origin (``Settings.session_origin``). Opening it is a short
OAuth-style exchange between that origin (the entry point's authorizer) and the console:

    1. GET <session origin>/_nbl/start          the authorizer sets a state cookie on the session
                                                 origin and sends the browser to the console
    2. GET <console>/_nbl/authorize?sid&state    the console checks: logged in, owner, running; it
                                                 mints a one-time code bound to (sid, user, login,
                                                 state) and sends the browser back
    3. GET <session origin>/_nbl/callback?code   the authorizer redeems the code (once, within
                                                 ``open_code_ttl_s``, only with the same state
                                                 cookie) and sets the session origin's own
                                                 ``__Host-`` cookie
    4. every request                             nginx asks the authorizer (auth_request); it checks
                                                 the cookie, the session (running, same owner) and
                                                 the console login (not logged out) and hands nginx
                                                 the token, which nginx adds upstream

Redis keys (``P`` is ``<instance>:``), all with a TTL:

    P login:<login id>         the console login (hash: user, role, ...), written by ui.logins;
                               deleting it (logout, role change) revokes every notebook cookie
                               minted under it
    P nbcode:<sha256(code)>    a one-time code (JSON: sid, user, login, state hash)
    P nbauth:<sha256(cookie)>  a session origin's cookie (JSON: sid, user, login)

Only hashes of codes and cookies are stored, so a Redis dump does not yield a usable cookie.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

import redis

from launcher.adapters.redis_store import SessionStore
from launcher.errors import InvalidRequest, NotFound, PermissionDenied
from launcher.models import SESSION_ID_PATTERN, Actor, Permission, SessionStatus
from launcher.rbac import authorize
from launcher.settings import Settings

STATE_COOKIE = "__Host-nbl-state"
SESSION_COOKIE = "__Host-nbl"
_RANDOM_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_SID_RE = re.compile(SESSION_ID_PATTERN)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def valid_random(value: object) -> bool:
    """A state, code or cookie value as this module makes them (and nothing a user could smuggle in)."""
    return isinstance(value, str) and bool(_RANDOM_RE.fullmatch(value))


def valid_sid(value: object) -> bool:
    return isinstance(value, str) and bool(_SID_RE.fullmatch(value))


# Redeem a code: GETDEL (usable once), bound to the state cookie and the session origin it was
# minted for; then record the origin's cookie under the same console login.
# KEYS: 1 code key, 2 auth key  ARGV: 1 sid, 2 state hash, 3 auth json prefix ttl, 4 key prefix
_REDEEM = """
local raw = redis.call('GETDEL', KEYS[1])
if not raw then return {'no_code', ''} end
local c = cjson.decode(raw)
if c['sid'] ~= ARGV[1] then return {'wrong_session', ''} end
if c['state'] ~= ARGV[2] then return {'wrong_state', ''} end
if redis.call('EXISTS', ARGV[4] .. 'login:' .. c['login']) == 0 then return {'logged_out', ''} end
local sraw = redis.call('GET', ARGV[4] .. 'session:' .. c['sid'])
if not sraw then return {'not_running', ''} end
local s = cjson.decode(sraw)
if s['status'] ~= 'running' or s['user'] ~= c['user'] then return {'not_running', ''} end
redis.call('SET', KEYS[2], cjson.encode({sid = c['sid'], user = c['user'], login = c['login']}),
  'EX', tonumber(ARGV[3]))
return {'ok', s['template']}
"""

# Authorize one request: the cookie's record, for this session origin, under a live console login,
# for a session that is running and still owned by the same user. Returns the Jupyter token.
# KEYS: 1 auth key  ARGV: 1 sid, 2 key prefix
_CHECK = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'no_login', ''} end
local a = cjson.decode(raw)
if a['sid'] ~= ARGV[1] then return {'no_login', ''} end
local luser = redis.call('HGET', ARGV[2] .. 'login:' .. a['login'], 'user')
if not luser or luser ~= a['user'] then return {'logged_out', ''} end
local sraw = redis.call('GET', ARGV[2] .. 'session:' .. a['sid'])
if not sraw then return {'not_running', ''} end
local s = cjson.decode(sraw)
if s['status'] ~= 'running' or s['user'] ~= a['user'] then return {'not_running', ''} end
return {'ok', s['token']}
"""


@dataclass(frozen=True)
class Verdict:
    """The outcome of a redeem or check: ``ok`` with a value (template or token), or a reason."""

    outcome: str
    value: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class EntryAuth:
    """The Redis side of the open flow (used by the console, the authorizer and tests)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self.settings = settings
        self.prefix = f"{settings.instance}:"
        self._redeem = client.register_script(_REDEEM)
        self._check = client.register_script(_CHECK)

    def issue_code(self, *, login_id: str, actor: Actor, session_id: str, state: str) -> str:
        """Step 2, in the console: the URL of the session origin's callback with a fresh one-time code.

        Only the session's owner, holding LAUNCH_NOTEBOOKS, may open it, and only while it runs.
        """
        if not valid_sid(session_id):
            raise InvalidRequest("this notebook link is malformed; open the notebook from the console")
        if not valid_random(state):
            raise InvalidRequest("this notebook link is malformed or expired; open the notebook from the console")
        if not authorize(actor, Permission.LAUNCH_NOTEBOOKS):
            raise PermissionDenied(f"{actor.name} ({actor.role.value}) may not open notebooks")
        session = SessionStore(self._r, self.settings).get(session_id)
        if session is None or session.user != actor.name:
            # The same answer whether the session exists or not: ids of others are not confirmed.
            raise NotFound("this notebook is not one of yours; open your own from the console")
        if session.status != SessionStatus.RUNNING or not session.url:
            raise NotFound("this notebook is not running (any more); start it again from the console")
        code = new_secret()
        record = {"sid": session_id, "user": actor.name, "login": login_id, "state": digest(state)}
        self._r.set(self.prefix + "nbcode:" + digest(code), json.dumps(record), ex=self.settings.open_code_ttl_s)
        return f"{session.url.rstrip('/')}/_nbl/callback?{urlencode({'code': code})}"

    def redeem(self, code: str, state: str, session_id: str) -> tuple[Verdict, str]:
        """Step 3, in the authorizer: (verdict, new cookie value). The code is spent either way."""
        if not (valid_random(code) and valid_random(state) and valid_sid(session_id)):
            return Verdict("malformed"), ""
        cookie = new_secret()
        outcome, value = self._redeem(
            keys=[self.prefix + "nbcode:" + digest(code), self.prefix + "nbauth:" + digest(cookie)],
            args=[session_id, digest(state), self.settings.login_ttl_s, self.prefix],
        )
        return Verdict(outcome, value), cookie if outcome == "ok" else ""

    def check(self, cookie: str, session_id: str) -> Verdict:
        """Step 4: whether this cookie may use this session now; ``value`` is the Jupyter token."""
        if not (valid_random(cookie) and valid_sid(session_id)):
            return Verdict("no_login")
        outcome, value = self._check(keys=[self.prefix + "nbauth:" + digest(cookie)], args=[session_id, self.prefix])
        return Verdict(outcome, value)


def check_keys(prefix: str, cookie: str) -> list[str]:
    """The KEYS of the check script for one cookie (the authorizer runs it on an async client)."""
    return [prefix + "nbauth:" + digest(cookie)]


CHECK_SCRIPT = _CHECK
REDEEM_SCRIPT = _REDEEM
