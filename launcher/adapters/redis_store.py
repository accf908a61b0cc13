"""Session state in Redis: one JSON record per session, atomic transitions, an audit stream.

Keys (``P`` is ``<instance>:``):

    P session:<sid>        the Session record (JSON, schema-versioned); terminal ones expire
    P user:<user>          the user's live session id (at most one; the reservation lock)
    P user:<user>:last     the user's most recent session id
    P live                 set of live session ids (the global cap counts this)
    P host:<host>:live     set of live session ids placed on a host (the per-host cap)
    P recent               sorted set of session ids by creation time
    P audit                stream of transitions (actor, action, reason, time)
    P usage:<user>         the user's workspace usage against its quota (WorkspaceUsage JSON)

Every write that must be atomic is one Lua script: a reservation checks the user lock and both caps
and places the session in one step; a transition is a compare-and-set on the status that also keeps
the sets, the user lock and the audit stream in step. Redis errors become ``RuntimeUnavailable``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import TypeAdapter

from launcher.errors import Conflict, LimitReached, NotFound, RuntimeUnavailable
from launcher.models import (
    AuditEvent,
    Session,
    SessionStatus,
    WorkspaceUsage,
    utcnow,
)
from launcher.settings import Settings
from launcher.transitions import Command, action_of, rule

_RESERVE = """
-- KEYS: 1 session, 2 user lock, 3 live, 4 audit, 5 recent, 6 user last, 7.. host live sets
-- ARGV: 1 session json, 2 sid, 3 global cap, 4 host cap, 5 audit maxlen, 6 now iso, 7 actor,
--       8 now epoch, 9.. host names (ARGV[i + 2] names KEYS[i])
local existing = redis.call('GET', KEYS[2])
if existing then return {'exists', existing} end
local live = redis.call('SCARD', KEYS[3])
if live >= tonumber(ARGV[3]) then return {'global_cap', tostring(live)} end
local best, best_n = nil, nil
for i = 7, #KEYS do
  local n = redis.call('SCARD', KEYS[i])
  if n < tonumber(ARGV[4]) and (best_n == nil or n < best_n) then best, best_n = i, n end
end
if best == nil then return {'host_cap', tostring(live)} end
local host = ARGV[best + 2]
local s = cjson.decode(ARGV[1])
s['host'] = host
redis.call('SET', KEYS[1], cjson.encode(s))
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[6], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[best], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[8], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -10001)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*',
  'session_id', ARGV[2], 'user', s['user'], 'template', s['template'], 'host', host,
  'action', 'queued', 'previous', '', 'actor', ARGV[7], 'reason', 'launch', 'detail', '',
  'time', ARGV[6])
return {'ok', host}
"""

_TRANSITION = """
-- KEYS: 1 session, 2 live, 3 audit
-- ARGV: 1 expected statuses (comma separated), 2 new status ('' keeps it), 3 patch json,
--       4 actor, 5 reason, 6 now iso, 7 ttl of terminal records, 8 audit maxlen, 9 key prefix,
--       10 detail, 11 audit action ('' writes no audit entry), 13 a stop-all's set to join ('' none),
--       12 json of timestamp fields that
--       are set only when newer than the stored value (ISO-8601 UTC, compared after normalising)
local function norm(t)
  if type(t) ~= 'string' then return '' end
  if not string.find(t, '%.') then t = string.gsub(t, 'Z$', '.000000Z') end
  return t
end
local raw = redis.call('GET', KEYS[1])
if not raw then return {'missing', ''} end
local s = cjson.decode(raw)
local cur = s['status']
local allowed = false
for st in string.gmatch(ARGV[1], '[^,]+') do
  if st == cur then allowed = true end
end
if not allowed then return {'conflict', raw} end
for k, v in pairs(cjson.decode(ARGV[3])) do s[k] = v end
for k, v in pairs(cjson.decode(ARGV[12])) do
  if norm(v) > norm(s[k]) then s[k] = v end
end
local new = ARGV[2]
if new ~= '' and new ~= cur then s['status_since'] = ARGV[6] end
if new ~= '' then s['status'] = new end
if ARGV[13] and ARGV[13] ~= '' then
  redis.call('SADD', ARGV[13], s['id'])
  redis.call('EXPIRE', ARGV[13], 86400)
end
local enc = cjson.encode(s)
if new == 'stopped' or new == 'error' then
  redis.call('SET', KEYS[1], enc, 'EX', tonumber(ARGV[7]))
  redis.call('SREM', KEYS[2], s['id'])
  if type(s['host']) == 'string' then
    redis.call('SREM', ARGV[9] .. 'host:' .. s['host'] .. ':live', s['id'])
  end
  local ukey = ARGV[9] .. 'user:' .. s['user']
  if redis.call('GET', ukey) == s['id'] then redis.call('DEL', ukey) end
else
  redis.call('SET', KEYS[1], enc)
end
if ARGV[11] ~= '' then
  local host = s['host']
  if type(host) ~= 'string' then host = '' end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', tonumber(ARGV[8]), '*',
    'session_id', s['id'], 'user', s['user'], 'template', s['template'], 'host', host,
    'action', ARGV[11], 'previous', cur, 'actor', ARGV[4], 'reason', ARGV[5], 'detail', ARGV[10],
    'time', ARGV[6])
end
return {'ok', enc}
"""

_ADOPT = """
-- Re-register a running container's session that Redis lost (reconcile).
-- KEYS: 1 session, 2 user lock, 3 live, 4 host live, 5 audit, 6 recent, 7 user last
-- ARGV: 1 session json, 2 sid, 3 audit maxlen, 4 now iso, 5 actor, 6 created epoch, 7 global cap, 8 host cap
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', ''} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return {'user_busy', holder} end
-- The caps hold for adopted sessions too: launches admitted after Redis lost its data took the seats.
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[7]) then return {'global_cap', ''} end
if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[8]) then return {'host_cap', ''} end
local s = cjson.decode(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[7], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[2])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*',
  'session_id', ARGV[2], 'user', s['user'], 'template', s['template'], 'host', s['host'],
  'action', 'adopted', 'previous', '', 'actor', ARGV[5], 'reason', 'reconcile', 'detail', '',
  'time', ARGV[4])
return {'ok', ''}
"""

@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise RuntimeUnavailable(
            "the session store (Redis) is not reachable; try again shortly", f"redis error: {exc!r}"
        ) from None


_DATETIME = TypeAdapter(datetime)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):  # the same text form the model stores, so Lua can compare them
        return _DATETIME.dump_python(value.astimezone(UTC), mode="json")
    if hasattr(value, "value"):  # enums
        return value.value
    return value


class SessionStore:
    """All reads and writes of session state go through here."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        # decode_responses=True: every reply is a str; redis-py types replies as bytes | str | None.
        self._r: Any = client
        self._settings = settings
        self.prefix = f"{settings.instance}:"
        self._reserve = client.register_script(_RESERVE)
        self._transition = client.register_script(_TRANSITION)
        self._adopt = client.register_script(_ADOPT)

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionStore:
        client = redis.Redis.from_url(
            settings.redis_dsn(),
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=3,
            health_check_interval=30,
        )
        return cls(client, settings)

    @property
    def redis(self) -> redis.Redis:
        client: redis.Redis = self._r
        return client

    # -- keys -------------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- writes -----------------------------------------------------------------------------
    def reserve(self, session: Session, *, actor: str) -> Session:
        """Record a new queued session if the user has none live and both caps allow it.

        Picks the least loaded of the configured hosts with room. Raises ``Conflict`` when the user
        already has a live session, ``LimitReached`` when a cap is hit.
        """
        hosts = list(self._settings.hosts)
        now = utcnow()
        keys = [
            self._k("session", session.id),
            self._k("user", session.user),
            self._k("live"),
            self._k("audit"),
            self._k("recent"),
            self._k("user", session.user, "last"),
            *[self._k("host", h, "live") for h in hosts],
        ]
        args: list[Any] = [
            session.to_storage(),
            session.id,
            self._settings.max_sessions,
            self._settings.max_sessions_per_host,
            self._settings.audit_maxlen,
            now.isoformat(),
            actor,
            now.timestamp(),
            *hosts,
        ]
        with _redis_errors():
            verdict, detail = self._reserve(keys=keys, args=args)
        if verdict == "exists":
            raise Conflict(f"user {session.user!r} already has a live notebook session ({detail})")
        if verdict == "global_cap":
            raise LimitReached(
                f"the launcher is at its limit of {self._settings.max_sessions} concurrent sessions "
                f"({detail} running); try again when one stops"
            )
        if verdict == "host_cap":
            raise LimitReached(
                f"every Docker host is at its limit of {self._settings.max_sessions_per_host} sessions; "
                "try again when one stops"
            )
        return session.model_copy(update={"host": detail})

    def apply(self, session_id: str, command: Command) -> Session:
        """Apply one command of the state machine (``launcher.transitions``) atomically.

        Raises ``NotFound`` when there is no such session, ``Conflict`` when its status does not allow
        the command (the record is unchanged then).
        """
        allowed, target = rule(command)
        batch = getattr(command, "batch", None)
        args: list[Any] = [
            ",".join(sorted(s.value for s in allowed)),
            target.value if target is not None else "",
            json.dumps({k: _jsonable(v) for k, v in command.patch().items()}),
            str(command.by),
            command.reason.value,
            utcnow().isoformat(),
            self._settings.session_record_ttl_s,
            self._settings.audit_maxlen,
            self.prefix,
            command.detail(),
            action_of(command),
            json.dumps({k: _jsonable(v) for k, v in command.newer().items()}),
            self._k("stopall", batch) if batch else "",
        ]
        keys = [self._k("session", session_id), self._k("live"), self._k("audit")]
        with _redis_errors():
            verdict, raw = self._transition(keys=keys, args=args)
        if verdict == "missing":
            raise NotFound(f"no session {session_id!r}")
        session = Session.from_storage(raw)
        if verdict == "conflict":
            name = type(command).__name__
            raise Conflict(f"session {session_id} is {session.status.value}: {name} does not apply")
        return session

    def batch_members(self, batch: str) -> list[Session]:
        """The sessions a stop-all asked to stop (for its progress)."""
        with _redis_errors():
            ids = self._r.smembers(self._k("stopall", batch))
        return self._many(ids)

    def adopt(self, session: Session, *, actor: str) -> bool:
        """Record a session rebuilt from a live container. False when its user holds another session or
        the caps are full (launches admitted after Redis lost its data took the seats): the caller then
        removes the container."""
        assert session.host is not None
        keys = [
            self._k("session", session.id),
            self._k("user", session.user),
            self._k("live"),
            self._k("host", session.host, "live"),
            self._k("audit"),
            self._k("recent"),
            self._k("user", session.user, "last"),
        ]
        args: list[Any] = [
            session.to_storage(),
            session.id,
            self._settings.audit_maxlen,
            utcnow().isoformat(),
            actor,
            session.created_at.timestamp(),
            self._settings.max_sessions,
            self._settings.max_sessions_per_host,
        ]
        with _redis_errors():
            verdict, _ = self._adopt(keys=keys, args=args)
        return verdict in ("ok", "exists")

    def record_event(self, action: str, *, user: str, actor: str, reason: str = "", detail: str = "") -> None:
        """Append an event that belongs to no session (login, login_failed, logout...): session id empty."""
        fields = {
            "session_id": "",
            "user": user,
            "template": "",
            "host": "",
            "action": action,
            "previous": "",
            "actor": actor,
            "reason": reason,
            "detail": detail,
            "time": utcnow().isoformat(),
        }
        with _redis_errors():
            self._r.xadd(self._k("audit"), fields, maxlen=self._settings.audit_maxlen, approximate=True)

    # -- reads ------------------------------------------------------------------------------
    def get(self, session_id: str) -> Session | None:
        with _redis_errors():
            raw = self._r.get(self._k("session", session_id))
        return Session.from_storage(raw) if raw else None

    def require(self, session_id: str) -> Session:
        session = self.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        return session

    def live_session_for(self, user: str) -> Session | None:
        with _redis_errors():
            sid = self._r.get(self._k("user", user))
        return self.get(sid) if sid else None

    def latest_session_for(self, user: str) -> Session | None:
        """The live session, else the most recent one (stopped or failed) while its record lasts."""
        live = self.live_session_for(user)
        if live is not None:
            return live
        with _redis_errors():
            sid = self._r.get(self._k("user", user, "last"))
        return self.get(sid) if sid else None

    def _many(self, ids: Iterable[str]) -> list[Session]:
        keys = [self._k("session", sid) for sid in ids]
        if not keys:
            return []
        with _redis_errors():
            raws = self._r.mget(keys)
        return [Session.from_storage(raw) for raw in raws if raw]

    def list_live(self, host: str | None = None) -> list[Session]:
        key = self._k("host", host, "live") if host else self._k("live")
        with _redis_errors():
            ids = self._r.smembers(key)
        return sorted(self._many(ids), key=lambda s: s.created_at)

    def list_recent(self, limit: int = 200) -> list[Session]:
        with _redis_errors():
            ids = self._r.zrevrange(self._k("recent"), 0, limit - 1)
        return self._many(ids)

    def count_live(self) -> int:
        with _redis_errors():
            return int(self._r.scard(self._k("live")))

    def queue_position(self, session: Session) -> int | None:
        """1-based position among queued sessions on the same host, by creation time."""
        if session.status != SessionStatus.QUEUED or session.host is None:
            return None
        queued = [s for s in self.list_live(session.host) if s.status == SessionStatus.QUEUED]
        for position, other in enumerate(queued, start=1):
            if other.id == session.id:
                return position
        return None

    def audit(self, *, limit: int = 200, user: str | None = None) -> list[AuditEvent]:
        """Newest first; filtered by user when given (scans at most 20x ``limit`` entries)."""
        with _redis_errors():
            rows = self._r.xrevrange(self._k("audit"), count=limit * (20 if user else 1))
        events = []
        for entry_id, fields in rows:
            if user and fields.get("user") != user:
                continue
            events.append(AuditEvent(id=entry_id, **fields))
            if len(events) >= limit:
                break
        return events

    # -- workspace usage (workers/quota.py measures it; the service and console read it) ------
    def set_usage(self, user: str, usage: WorkspaceUsage) -> None:
        with _redis_errors():
            self._r.set(self._k("usage", user), usage.model_dump_json(), ex=30 * 24 * 3600)

    def usage(self, user: str) -> WorkspaceUsage | None:
        with _redis_errors():
            raw = self._r.get(self._k("usage", user))
        return WorkspaceUsage.model_validate_json(raw) if raw else None

    # -- what the console has told a user (console notices: each ended session once) ---------------
    def notice_marks(self, user: str) -> dict[str, str]:
        """``live``: the last session the user saw live in the console; ``told``: the last whose end they saw."""
        with _redis_errors():
            return dict(self._r.hgetall(self._k("notice", user)))

    def mark_notice(self, user: str, field: str, session_id: str) -> None:
        with _redis_errors():
            key = self._k("notice", user)
            self._r.hset(key, field, session_id)
            self._r.expire(key, 90 * 24 * 3600)

    def ping(self) -> None:
        with _redis_errors():
            self._r.ping()
