"""Session state in Redis: one JSON record per session, atomic transitions, an audit stream.

Keys (``P`` is ``<instance>:``):

    P session:<sid>        the Session record (JSON, schema-versioned); terminal ones expire
    P user:<user>:live     set of the user's live session ids (the per-user limits count this)
    P user:<user>:last     the user's most recent session id
    P live                 set of live session ids, waiting ones included
    P queue                the admission queue: waiting session ids by ticket (arrival order)
    P queue:since          waiting session ids by the time they joined (for wait figures)
    P ticket               the last ticket handed out
    P waits, P admissions  the last 1000 admission waits (s); how many admissions so far
    P hosts                registered hosts by the time each last announced itself
    P host:<host>          what a host offers (mcpu, mem, max), what is reserved (used_mcpu, used_mem), state
    P host:<host>:live     set of live session ids placed on a host
    P recent               sorted set of session ids by creation time
    P audit                stream of transitions (actor, action, reason, time)
    P usage:<user>         the user's workspace usage against its quota (WorkspaceUsage JSON)

Every write that must be atomic is one Lua script: a launch checks the user's limits, joins the queue and
admits from its head in one step; admission places each session on the up, undrained host with the most
room left for its profile and reserves the profile there, in arrival order; a transition is a
compare-and-set on the status that also keeps the sets, the reservations, the queue and the audit stream in
step. Redis errors become ``RuntimeUnavailable``.
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
    HostInfo,
    HostState,
    Session,
    SessionStatus,
    WorkspaceUsage,
    utcnow,
)
from launcher.settings import Settings
from launcher.transitions import Command, action_of, rule

# Admission: shared by the launch and the admission scripts. Hosts are read from the registry (``hosts``: a sorted
# set of host names by when each last announced itself; ``host:<h>``: what it offers and what is reserved on it).
_ADMISSION_LIB = """
local function host_room(P, h)
  local f = redis.call('HMGET', P .. 'host:' .. h, 'mcpu', 'mem', 'used_mcpu', 'used_mem', 'state', 'max')
  if not f[1] or not f[2] or f[5] == 'draining' then return nil end
  return {cap_c = tonumber(f[1]), cap_m = tonumber(f[2]), free_c = tonumber(f[1]) - tonumber(f[3] or 0),
          free_m = tonumber(f[2]) - tonumber(f[4] or 0), max = tonumber(f[6] or 0),
          n = redis.call('SCARD', P .. 'host:' .. h .. ':live')}
end
local function need_of(s)
  return math.floor((tonumber(s['cpus']) or 0) * 1000 + 0.5), (tonumber(s['mem_bytes']) or 0)
end
local function up_hosts(P, now, down_after)
  return redis.call('ZRANGEBYSCORE', P .. 'hosts', now - down_after, '+inf')
end
-- The up, undrained host with room for s where the most room is left (spreads the load); nil when none has.
local function place(P, s, now, down_after)
  local need_c, need_m = need_of(s)
  local best, best_score = nil, nil
  for _, h in ipairs(up_hosts(P, now, down_after)) do
    local r = host_room(P, h)
    if r and r.free_c >= need_c and r.free_m >= need_m and r.n < r.max then
      local score = math.min((r.free_c - need_c) / r.cap_c, (r.free_m - need_m) / r.cap_m)
      if best == nil or score > best_score or (score == best_score and h < best) then best, best_score = h, score end
    end
  end
  return best
end
-- Whether some up, undrained host could ever hold s (were it empty).
local function could_fit(P, s, now, down_after)
  local need_c, need_m = need_of(s)
  local any = false
  for _, h in ipairs(up_hosts(P, now, down_after)) do
    local r = host_room(P, h)
    if r then
      any = true
      if r.cap_c >= need_c and r.cap_m >= need_m and r.max > 0 then return true end
    end
  end
  return not any  -- no host up at all: it waits for one
end
local function admitted_count(P)
  return redis.call('SCARD', P .. 'live') - redis.call('ZCARD', P .. 'queue')
end
-- Admit from the head of the queue, in arrival order, while the head fits somewhere; returns the admitted ids.
local function admit_all(P, now, now_iso, down_after, global_cap, maxlen, actor)
  local admitted = {}
  while true do
    local head = redis.call('ZRANGE', P .. 'queue', 0, 0)
    if #head == 0 then break end
    local sid = head[1]
    local raw = redis.call('GET', P .. 'session:' .. sid)
    local s = raw and cjson.decode(raw)
    if not s or s['status'] ~= 'waiting' then
      redis.call('ZREM', P .. 'queue', sid)
      redis.call('ZREM', P .. 'queue:since', sid)
    else
      if admitted_count(P) >= global_cap then break end
      local h = place(P, s, now, down_after)
      if not h then break end
      local need_c, need_m = need_of(s)
      s['status'] = 'queued'
      s['host'] = h
      s['status_since'] = now_iso
      redis.call('SET', P .. 'session:' .. sid, cjson.encode(s))
      redis.call('ZREM', P .. 'queue', sid)
      local since = redis.call('ZSCORE', P .. 'queue:since', sid)
      redis.call('ZREM', P .. 'queue:since', sid)
      local waited = ''
      if since then
        waited = string.format('%.3f', now - tonumber(since))
        redis.call('LPUSH', P .. 'waits', waited)
        redis.call('LTRIM', P .. 'waits', 0, 999)
      end
      redis.call('SADD', P .. 'host:' .. h .. ':live', sid)
      redis.call('HINCRBY', P .. 'host:' .. h, 'used_mcpu', need_c)
      redis.call('HINCRBY', P .. 'host:' .. h, 'used_mem', need_m)
      redis.call('INCR', P .. 'admissions')
      redis.call('XADD', P .. 'audit', 'MAXLEN', '~', maxlen, '*',
        'session_id', sid, 'user', s['user'], 'template', s['template'], 'host', h,
        'action', 'queued', 'previous', 'waiting', 'actor', actor, 'reason', 'admitted', 'detail', waited,
        'time', now_iso)
      table.insert(admitted, sid)
    end
  end
  return admitted
end
"""

_LAUNCH = (
    _ADMISSION_LIB
    + """
-- ARGV: 1 prefix, 2 session json, 3 sid, 4 user, 5 max sessions per user, 6 max user mcpu (0: none),
--       7 '1' to wait in the queue / '0' to refuse unless admitted at once, 8 now epoch, 9 now iso,
--       10 host down after (s), 11 global cap, 12 audit maxlen, 13 actor
local P, sid, user = ARGV[1], ARGV[3], ARGV[4]
local now, now_iso, down_after = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local s = cjson.decode(ARGV[2])
local ukey = P .. 'user:' .. user .. ':live'
local count, used_c, name_hit = 0, 0, nil
local need_c, need_m = need_of(s)
for _, other in ipairs(redis.call('SMEMBERS', ukey)) do
  local raw = redis.call('GET', P .. 'session:' .. other)
  local o = raw and cjson.decode(raw)
  if not o or o['status'] == 'stopped' or o['status'] == 'error' then
    redis.call('SREM', ukey, other)
  else
    local st = o['status']
    if st == 'waiting' or st == 'queued' or st == 'starting' then return {'pending', other, ''} end
    if o['name'] == s['name'] then name_hit = other end
    count = count + 1
    used_c = used_c + need_of(o)
  end
end
if count >= tonumber(ARGV[5]) then return {'user_cap', tostring(count), ''} end
if name_hit then return {'name_taken', name_hit, ''} end
if tonumber(ARGV[6]) > 0 and used_c + need_c > tonumber(ARGV[6]) then return {'user_cpus', tostring(used_c), ''} end
if not could_fit(P, s, now, down_after) then return {'never_fits', '', ''} end
if ARGV[7] ~= '1' then
  if redis.call('ZCARD', P .. 'queue') > 0 then return {'full', 'queue', ''} end
  if admitted_count(P) >= tonumber(ARGV[11]) then return {'full', 'global', ''} end
  if not place(P, s, now, down_after) then return {'full', 'hosts', ''} end
end
local ticket = redis.call('INCR', P .. 'ticket')
s['ticket'] = ticket
s['status'] = 'waiting'
s['host'] = cjson.null
s['status_since'] = now_iso
redis.call('SET', P .. 'session:' .. sid, cjson.encode(s))
redis.call('ZADD', P .. 'queue', ticket, sid)
redis.call('ZADD', P .. 'queue:since', now, sid)
redis.call('SADD', P .. 'live', sid)
redis.call('SADD', ukey, sid)
redis.call('SET', P .. 'user:' .. user .. ':last', sid)
redis.call('ZADD', P .. 'recent', now, sid)
redis.call('ZREMRANGEBYRANK', P .. 'recent', 0, -10001)
redis.call('XADD', P .. 'audit', 'MAXLEN', '~', ARGV[12], '*',
  'session_id', sid, 'user', user, 'template', s['template'], 'host', '',
  'action', 'waiting', 'previous', '', 'actor', ARGV[13], 'reason', 'launch', 'detail', s['profile'],
  'time', now_iso)
local admitted = admit_all(P, now, now_iso, down_after, tonumber(ARGV[11]), ARGV[12], 'launcher')
return {'ok', redis.call('GET', P .. 'session:' .. sid), cjson.encode(admitted)}
"""
)

_ADMIT = (
    _ADMISSION_LIB
    + """
-- ARGV: 1 prefix, 2 now epoch, 3 now iso, 4 host down after (s), 5 global cap, 6 audit maxlen, 7 actor
local admitted = admit_all(ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7])
return cjson.encode(admitted)
"""
)

_REGISTER_HOST = """
-- A worker announces its host: what it offers, and that it is alive. Returns the previous announcement's
-- time ('' for a new host) so the caller knows a host that comes back.
-- KEYS: 1 hosts, 2 host hash   ARGV: 1 host, 2 now epoch, 3 mcpu, 4 mem, 5 max sessions, 6 engine cpus,
--       7 engine mem, 8 now iso
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'mcpu', ARGV[3], 'mem', ARGV[4], 'max', ARGV[5], 'engine_cpus', ARGV[6],
  'engine_mem', ARGV[7], 'seen_at', ARGV[8])
redis.call('HSETNX', KEYS[2], 'state', 'up')
redis.call('HSETNX', KEYS[2], 'registered_at', ARGV[8])
return seen or ''
"""

_POOL_TAKE = """
-- KEYS: 1 the idle set of a host and profile   ARGV: 1 prefix, 2 the claiming session ('' to take it out to destroy)
local slot = redis.call('SPOP', KEYS[1])
if not slot then return {} end
local key = ARGV[1] .. 'poolslot:' .. slot
local secret = redis.call('HGET', key, 'secret') or ''
if ARGV[2] == '' then
  redis.call('HSET', key, 'state', 'retiring')
else
  redis.call('HSET', key, 'state', 'claimed', 'session', ARGV[2])
end
return {slot, secret}
"""

_RECOUNT_HOST = """
-- What is reserved on a host, recounted from its live sessions (reconcile keeps the counters true).
-- KEYS: 1 host live set, 2 host hash   ARGV: 1 prefix
local c, m = 0, 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', ARGV[1] .. 'session:' .. sid)
  local s = raw and cjson.decode(raw)
  if not s or s['status'] == 'stopped' or s['status'] == 'error' or s['status'] == 'waiting' then
    redis.call('SREM', KEYS[1], sid)
  else
    c = c + math.floor((tonumber(s['cpus']) or 0) * 1000 + 0.5)
    m = m + (tonumber(s['mem_bytes']) or 0)
  end
end
redis.call('HSET', KEYS[2], 'used_mcpu', c, 'used_mem', m)
return {c, m}
"""

_TRANSITION = """
-- KEYS: 1 session, 2 live, 3 audit
-- ARGV: 1 expected statuses (comma separated), 2 new status ('' keeps it), 3 patch json,
--       4 actor, 5 reason, 6 now iso, 7 ttl of terminal records, 8 audit maxlen, 9 key prefix,
--       10 detail, 11 audit action ('' writes no audit entry), 13 a stop-all's set to join ('' none),
--       12 json of timestamp fields that
--       are set only when newer than the stored value (ISO-8601 UTC, compared after normalising),
--       14 now epoch
local function norm(t)
  if type(t) ~= 'string' then return '' end
  if not string.find(t, '%.') then t = string.gsub(t, 'Z$', '.000000Z') end
  return t
end
local raw = redis.call('GET', KEYS[1])
if not raw then return {'missing', ''} end
local s = cjson.decode(raw)
local cur = s['status']
local old_host = s['host']
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
local P = ARGV[9]
-- A session leaving its host (ended, or back to the queue) gives back what it reserved there, once.
local function release(h)
  if type(h) == 'string' and redis.call('SREM', P .. 'host:' .. h .. ':live', s['id']) == 1 then
    redis.call('HINCRBY', P .. 'host:' .. h, 'used_mcpu', -math.floor((tonumber(s['cpus']) or 0) * 1000 + 0.5))
    redis.call('HINCRBY', P .. 'host:' .. h, 'used_mem', -(tonumber(s['mem_bytes']) or 0))
  end
end
local enc = cjson.encode(s)
if new == 'stopped' or new == 'error' then
  redis.call('SET', KEYS[1], enc, 'EX', tonumber(ARGV[7]))
  redis.call('SREM', KEYS[2], s['id'])
  redis.call('ZREM', P .. 'queue', s['id'])
  redis.call('ZREM', P .. 'queue:since', s['id'])
  release(old_host)
  redis.call('SREM', P .. 'user:' .. s['user'] .. ':live', s['id'])
elseif new == 'waiting' and cur ~= 'waiting' then
  release(old_host)
  redis.call('SET', KEYS[1], enc)
  redis.call('ZADD', P .. 'queue', tonumber(s['ticket']), s['id'])
  redis.call('ZADD', P .. 'queue:since', ARGV[14], s['id'])
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
-- KEYS: 1 session, 2 user live set, 3 live, 4 host live, 5 audit, 6 recent, 7 user last, 8 host hash
-- ARGV: 1 session json, 2 sid, 3 audit maxlen, 4 now iso, 5 actor, 6 created epoch, 7 global cap, 8 host cap,
--       9 max sessions per user, 10 queue key
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', ''} end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[9]) then return {'user_busy', ''} end
-- The caps hold for adopted sessions too: launches admitted after Redis lost its data took the seats.
if redis.call('SCARD', KEYS[3]) - redis.call('ZCARD', ARGV[10]) >= tonumber(ARGV[7]) then return {'global_cap', ''} end
if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[8]) then return {'host_cap', ''} end
local s = cjson.decode(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SET', KEYS[7], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('HINCRBY', KEYS[8], 'used_mcpu', math.floor((tonumber(s['cpus']) or 0) * 1000 + 0.5))
redis.call('HINCRBY', KEYS[8], 'used_mem', (tonumber(s['mem_bytes']) or 0))
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


def _admitted_ids(raw: str) -> list[str]:
    """The admission step's list of session ids (cjson encodes an empty list as ``{}``)."""
    ids: list[str] = json.loads(raw) if raw != "{}" else []
    return ids


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
        self._launch = client.register_script(_LAUNCH)
        self._admit = client.register_script(_ADMIT)
        self._register = client.register_script(_REGISTER_HOST)
        self._recount = client.register_script(_RECOUNT_HOST)
        self._pool_take = client.register_script(_POOL_TAKE)
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
    def launch(self, session: Session, *, actor: str, queue: bool = True) -> tuple[Session, list[Session]]:
        """Record a launch in the admission queue, then admit from the head of the queue while hosts have room.

        Returns the recorded session (``waiting``, or ``queued`` on a host when it was admitted at once) and every
        session this step admitted (theirs to start: the caller dispatches them). With ``queue=False`` a launch
        that would have to wait is refused instead (``LimitReached``). Raises ``Conflict`` when the user has a
        launch in progress or a live session of that name, ``LimitReached`` for the per-user limits or a profile
        no host can hold.
        """
        s = self._settings
        now = utcnow()
        user_cpus = round(s.max_user_cpus * 1000) if s.max_user_cpus else 0
        args: list[Any] = [
            self.prefix,
            session.to_storage(),
            session.id,
            session.user,
            s.max_sessions_per_user,
            user_cpus,
            "1" if queue else "0",
            now.timestamp(),
            now.isoformat(),
            s.host_down_after_s,
            s.max_sessions,
            s.audit_maxlen,
            actor,
        ]
        with _redis_errors():
            verdict, detail, admitted = self._launch(keys=[], args=args)
        if verdict == "pending":
            raise Conflict("you already have a launch in progress: wait for it to finish or cancel it")
        if verdict == "name_taken":
            raise Conflict(f"you already have a live session named {session.label!r}: choose another name")
        if verdict == "user_cap":
            n = s.max_sessions_per_user
            raise LimitReached(f"you may run {n} session{'s' if n != 1 else ''} at once: stop one to launch another")
        if verdict == "user_cpus":
            raise LimitReached(
                f"your live sessions use {int(detail) / 1000:g} of your {s.max_user_cpus:g} CPUs: "
                f"a {session.profile} session needs {session.cpus:g} more; stop one or pick a smaller profile"
            )
        if verdict == "never_fits":
            raise LimitReached(f"no Docker host is large enough for the {session.profile!r} profile; pick another")
        if verdict == "full":
            why = {
                "queue": "others are already waiting for room",
                "global": f"the launcher is at its limit of {s.max_sessions} concurrent sessions",
                "hosts": "no Docker host has room for it now",
            }[detail]
            raise LimitReached(f"{why}; try again when a session stops (or launch with the queue)")
        recorded = Session.from_storage(detail)
        ids = _admitted_ids(admitted)
        return recorded, [x for x in self._many(ids) if x.status == SessionStatus.QUEUED]

    def reserve(self, session: Session, *, actor: str) -> Session:
        """Record a session and place it on a host now, or refuse (``LimitReached``): a launch without the queue."""
        recorded, _ = self.launch(session, actor=actor, queue=False)
        return recorded

    def admit(self, *, actor: str = "launcher") -> list[Session]:
        """Admit waiting launches from the head of the queue while hosts have room; returns those admitted
        (placed, ``queued``): the caller dispatches their starts."""
        s, now = self._settings, utcnow()
        args: list[Any] = [
            self.prefix,
            now.timestamp(),
            now.isoformat(),
            s.host_down_after_s,
            s.max_sessions,
            s.audit_maxlen,
            actor,
        ]
        with _redis_errors():
            raw = self._admit(keys=[], args=args)
        ids = _admitted_ids(raw)
        return [x for x in self._many(ids) if x.status == SessionStatus.QUEUED]

    # -- hosts --------------------------------------------------------------------------------
    def register_host(
        self,
        host: str,
        *,
        cpus: float,
        mem_bytes: int,
        engine_cpus: int = 0,
        engine_mem: int = 0,
        max_sessions: int | None = None,
    ) -> bool:
        """Announce a host (its worker does, every ``host_beacon_interval_s``): what it offers, and that it is alive.

        Returns True when the host is new or comes back after being down (the caller reconciles and admits)."""
        now = utcnow()
        args: list[Any] = [
            host,
            now.timestamp(),
            round(cpus * 1000),
            int(mem_bytes),
            max_sessions or self._settings.max_sessions_per_host,
            engine_cpus,
            engine_mem,
            now.isoformat(),
        ]
        with _redis_errors():
            seen = self._register(keys=[self._k("hosts"), self._k("host", host)], args=args)
        return seen == "" or now.timestamp() - float(seen) > self._settings.host_down_after_s

    def mark_host_gone(self, host: str) -> None:
        """The host's worker stopped on purpose: the host is down now (it registers again when it starts)."""
        with _redis_errors():
            self._r.zadd(self._k("hosts"), {host: 0}, xx=True)

    def recount_host(self, host: str) -> None:
        """Recount what is reserved on a host from its live sessions (reconcile does, to keep the counters true)."""
        with _redis_errors():
            self._recount(keys=[self._k("host", host, "live"), self._k("host", host)], args=[self.prefix])

    def set_draining(self, host: str, draining: bool) -> HostInfo:
        """Drain a host (no new sessions; the ones it runs run out) or take it back. ``NotFound`` for no such host."""
        with _redis_errors():
            if self._r.zscore(self._k("hosts"), host) is None:
                raise NotFound(f"no Docker host {host!r} has registered")
            self._r.hset(self._k("host", host), "state", "draining" if draining else "up")
        info = self.host(host)
        assert info is not None
        return info

    def forget_host(self, host: str) -> None:
        """Remove a decommissioned host from the registry; refused (``Conflict``) while sessions are placed on it."""
        with _redis_errors():
            if self._r.scard(self._k("host", host, "live")):
                raise Conflict(f"host {host!r} still has live sessions: drain it and wait for them to end")
            self._r.zrem(self._k("hosts"), host)
            self._r.delete(self._k("host", host), self._k("host", host, "live"))

    def host(self, host: str) -> HostInfo | None:
        return next((h for h in self.hosts() if h.name == host), None)

    def hosts(self) -> list[HostInfo]:
        """Every registered host with its state (down when it has not announced itself in ``host_down_after_s``)."""
        now = utcnow().timestamp()
        with _redis_errors():
            seen = dict(self._r.zrange(self._k("hosts"), 0, -1, withscores=True))
            pipe = self._r.pipeline(transaction=False)
            for name in seen:
                pipe.hgetall(self._k("host", name))
                pipe.scard(self._k("host", name, "live"))
            replies = pipe.execute()
        out = []
        for i, name in enumerate(seen):
            f, n = replies[2 * i], replies[2 * i + 1]
            drained = f.get("state") == "draining"
            down = now - float(seen[name]) > self._settings.host_down_after_s
            state = HostState.DOWN if down else HostState.DRAINING if drained else HostState.UP
            out.append(
                HostInfo(
                    name=name,
                    state=state,
                    drained=drained,
                    cpus=int(f.get("mcpu", 0)) / 1000,
                    mem_bytes=int(f.get("mem", 0)),
                    used_cpus=int(f.get("used_mcpu", 0)) / 1000,
                    used_mem_bytes=int(f.get("used_mem", 0)),
                    sessions=int(n),
                    max_sessions=int(f.get("max", 0)),
                    engine_cpus=int(f.get("engine_cpus", 0)),
                    engine_mem_bytes=int(f.get("engine_mem", 0)),
                    seen_at=datetime.fromtimestamp(float(seen[name]), UTC),
                )
            )
        return sorted(out, key=lambda h: h.name)

    def down_hosts(self) -> set[str]:
        return {h.name for h in self.hosts() if h.state == HostState.DOWN}

    # -- the warm pool (workers/pool.py) -------------------------------------------------------
    def pool_register(
        self, host: str, profile: str, slot: str, secret: str, *, snapshot: str = "", image: str = ""
    ) -> None:
        """A pool container is about to boot: recorded first, so reconcile knows it for what it is. ``snapshot``
        and ``image``: the data and the image ID it boots on."""
        record = {
            "host": host,
            "profile": profile,
            "secret": secret,
            "state": "booting",
            "session": "",
            "snapshot": snapshot,
            "image": image,
            "since": utcnow().isoformat(),
        }
        with _redis_errors():
            pipe = self._r.pipeline()
            pipe.hset(self._k("poolslot", slot), mapping=record)
            pipe.sadd(self._k("pool", host), slot)
            pipe.execute()

    def pool_ready(self, slot: str) -> None:
        with _redis_errors():
            host, profile = self._r.hmget(self._k("poolslot", slot), "host", "profile")
            if host is None:
                return
            pipe = self._r.pipeline()
            pipe.hset(self._k("poolslot", slot), "state", "idle")
            pipe.sadd(self._k("pool", host, profile, "idle"), slot)
            pipe.execute()

    def pool_take(self, host: str, profile: str, session_id: str) -> tuple[str, str] | None:
        """Claim an idle pool container of this host and profile for a session (atomically: never two claims of
        one container): its slot and its Jupyter secret, or None when the pool has none."""
        with _redis_errors():
            got = self._pool_take(keys=[self._k("pool", host, profile, "idle")], args=[self.prefix, session_id])
        return (got[0], got[1]) if got else None

    def pool_take_idle(self, host: str, profile: str) -> str | None:
        """Take an idle pool container out of the pool to destroy it (the pool shrinks to make room)."""
        with _redis_errors():
            got = self._pool_take(keys=[self._k("pool", host, profile, "idle")], args=[self.prefix, ""])
        return got[0] if got else None

    def pool_retire(self, host: str, profile: str, slot: str) -> bool:
        """Take this idle pool container out of the pool (to destroy it); False when it is not idle any more."""
        with _redis_errors():
            if not self._r.srem(self._k("pool", host, profile, "idle"), slot):
                return False
            self._r.hset(self._k("poolslot", slot), "state", "retiring")
        return True

    def pool_forget(self, slot: str) -> None:
        with _redis_errors():
            host, profile = self._r.hmget(self._k("poolslot", slot), "host", "profile")
            pipe = self._r.pipeline()
            pipe.delete(self._k("poolslot", slot))
            if host is not None:
                pipe.srem(self._k("pool", host), slot)
                pipe.srem(self._k("pool", host, profile or "", "idle"), slot)
            pipe.execute()

    def pool_slots(self, host: str) -> dict[str, dict[str, str]]:
        """Every pool container recorded for a host: slot -> its record (state booting, idle or claimed)."""
        with _redis_errors():
            slots = sorted(self._r.smembers(self._k("pool", host)))
            pipe = self._r.pipeline(transaction=False)
            for slot in slots:
                pipe.hgetall(self._k("poolslot", slot))
            records = pipe.execute()
        return {slot: rec for slot, rec in zip(slots, records, strict=True) if rec}

    # -- the admission queue ------------------------------------------------------------------
    def waiting(self) -> list[Session]:
        """The admission queue, first in line first."""
        with _redis_errors():
            ids = self._r.zrange(self._k("queue"), 0, -1)
        by_id = {x.id: x for x in self._many(ids)}
        return [by_id[i] for i in ids if i in by_id and by_id[i].status == SessionStatus.WAITING]

    def queue_stats(self) -> dict[str, float]:
        """Depth, the oldest wait (s), admissions so far, and the recent admission waits' median (s)."""
        now = utcnow().timestamp()
        with _redis_errors():
            depth = int(self._r.zcard(self._k("queue")))
            oldest = self._r.zrange(self._k("queue:since"), 0, 0, withscores=True)
            admissions = int(self._r.get(self._k("admissions")) or 0)
            waits = sorted(float(w) for w in self._r.lrange(self._k("waits"), 0, 199))
        return {
            "depth": depth,
            "oldest_wait_s": now - oldest[0][1] if oldest else 0.0,
            "admissions": admissions,
            "recent_wait_p50_s": waits[len(waits) // 2] if waits else 0.0,
            "recent_wait_max_s": waits[-1] if waits else 0.0,
        }

    def recent_waits(self, limit: int = 1000) -> list[float]:
        """How long recent admissions waited in the queue (s), newest first."""
        with _redis_errors():
            return [float(w) for w in self._r.lrange(self._k("waits"), 0, limit - 1)]

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
            utcnow().timestamp(),
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
            self._k("user", session.user, "live"),
            self._k("live"),
            self._k("host", session.host, "live"),
            self._k("audit"),
            self._k("recent"),
            self._k("user", session.user, "last"),
            self._k("host", session.host),
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
            self._settings.max_sessions_per_user,
            self._k("queue"),
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

    def live_sessions_for(self, user: str) -> list[Session]:
        """The user's live sessions, oldest first."""
        with _redis_errors():
            ids = self._r.smembers(self._k("user", user, "live"))
        return sorted((x for x in self._many(ids) if x.status.live), key=lambda x: x.created_at)

    def live_session_for(self, user: str) -> Session | None:
        """The user's newest live session."""
        live = self.live_sessions_for(user)
        return live[-1] if live else None

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
        """1-based place of a waiting launch in the admission queue (None when it is not waiting)."""
        if session.status != SessionStatus.WAITING:
            return None
        with _redis_errors():
            rank = self._r.zrank(self._k("queue"), session.id)
        return None if rank is None else int(rank) + 1

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
