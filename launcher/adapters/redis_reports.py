"""Report runs and schedules in Redis, beside the sessions (same instance prefix ``P``, same audit stream).

    P report:<run>            the ReportRun record (JSON)
    P reports                 every run id by creation time
    P reports:open            runs not yet done (queued, running) by creation time, for the deadline sweep
    P user:<user>:reports     the user's run ids by creation time (the oldest beyond the keep are pruned)
    P schedule:<id>           the ReportSchedule record (JSON)
    P schedules               schedule ids by when each is next due (epoch seconds)
    P user:<user>:schedules   the user's schedule ids

A status change is a compare-and-set (``WATCH``): a run is claimed by one worker, and ends once. Taking the due
schedules is one Lua step that moves each one's next time on, so two Beat ticks never start the same run twice.
Redis errors become ``RuntimeUnavailable`` (the session store's translation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import redis

from launcher.adapters.redis_store import SessionStore, _redis_errors
from launcher.errors import Conflict, NotFound
from launcher.reports import ReportRun, ReportSchedule, ReportStatus

log = logging.getLogger("launcher.reports")

_TAKE_DUE = """
-- KEYS: 1 schedules zset   ARGV: 1 now epoch, 2 key prefix, 3 most to take
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local now, taken = tonumber(ARGV[1]), {}
for _, id in ipairs(due) do
  local raw = redis.call('GET', ARGV[2] .. 'schedule:' .. id)
  if raw then
    local every = tonumber(cjson.decode(raw)['every_s'])
    local nxt = tonumber(redis.call('ZSCORE', KEYS[1], id)) + every
    if nxt <= now then nxt = now + every end  -- a schedule that missed runs (Beat was down) runs once, not all
    redis.call('ZADD', KEYS[1], nxt, id)
    table.insert(taken, id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return taken
"""


class ReportStore:
    def __init__(self, sessions: SessionStore, keep_per_user: int = 200) -> None:
        self.sessions = sessions
        self._r: Any = sessions.redis
        self._p = sessions.prefix
        self._keep = keep_per_user
        self._take_due = self._r.register_script(_TAKE_DUE)

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- runs ---------------------------------------------------------------------------------------
    def create(self, run: ReportRun) -> ReportRun:
        score = run.created_at.timestamp()
        with _redis_errors():
            pipe = self._r.pipeline()
            pipe.set(self._k("report", run.id), run.to_storage(), nx=True)
            pipe.zadd(self._k("reports"), {run.id: score})
            pipe.zadd(self._k("reports", "open"), {run.id: score})
            pipe.zadd(self._k("user", run.user, "reports"), {run.id: score})
            created, *_ = pipe.execute()
        if not created:
            raise Conflict(f"report run {run.id} exists already")
        self._prune(run.user)
        return run

    def _prune(self, user: str) -> None:
        """Forget the user's oldest finished runs beyond the keep (their artifacts stay in their folder)."""
        key = self._k("user", user, "reports")
        with _redis_errors():
            extra = self._r.zcard(key) - self._keep
            if extra <= 0:
                return
            for run_id in self._r.zrange(key, 0, extra - 1):
                if self._r.zscore(self._k("reports", "open"), run_id) is not None:
                    continue
                pipe = self._r.pipeline()
                pipe.delete(self._k("report", run_id))
                pipe.zrem(self._k("reports"), run_id)
                pipe.zrem(key, run_id)
                pipe.execute()

    def get(self, run_id: str) -> ReportRun | None:
        with _redis_errors():
            raw = self._r.get(self._k("report", run_id))
        return ReportRun.from_storage(raw) if raw else None

    def require(self, run_id: str) -> ReportRun:
        run = self.get(run_id)
        if run is None:
            raise NotFound(f"no report run {run_id[:20]!r}")
        return run

    def update(self, run_id: str, expect: Iterable[ReportStatus], **changes: Any) -> ReportRun:
        """Apply ``changes`` if the run's status is one of ``expect`` (compare-and-set), else ``Conflict``."""
        allowed = set(expect)
        key = self._k("report", run_id)
        with _redis_errors(), self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if not raw:
                        raise NotFound(f"no report run {run_id[:20]!r}")
                    run = ReportRun.from_storage(raw)
                    if run.status not in allowed:
                        raise Conflict(f"report run {run_id} is {run.status.value}")
                    new = ReportRun.model_validate(run.model_dump() | changes)
                    pipe.multi()
                    pipe.set(key, new.to_storage())
                    if new.status.done:
                        pipe.zrem(self._k("reports", "open"), run_id)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def set_checked(self, run_id: str, rerun_id: str) -> None:
        """Note on an original run its latest reproduction (whatever the original's status)."""
        run = self.get(run_id)
        if run is not None:
            self.update(run_id, set(ReportStatus), checked=rerun_id)

    def _load(self, ids: list[str]) -> list[ReportRun]:
        if not ids:
            return []
        with _redis_errors():
            raws = self._r.mget([self._k("report", i) for i in ids])
        runs = []
        for run_id, raw in zip(ids, raws, strict=True):
            if not raw:
                continue
            try:
                runs.append(ReportRun.from_storage(raw))
            except ValueError as exc:  # unreadable (pydantic's ValidationError): one bad record hides only itself
                log.warning("report.unreadable run_id=%s error=%s", run_id[:20], str(exc)[:200])
        return runs

    def list_for(self, user: str, limit: int = 100) -> list[ReportRun]:
        """The user's runs, newest first."""
        with _redis_errors():
            ids = self._r.zrevrange(self._k("user", user, "reports"), 0, limit - 1)
        return self._load(list(ids))

    def list_all(self, limit: int = 200) -> list[ReportRun]:
        with _redis_errors():
            ids = self._r.zrevrange(self._k("reports"), 0, limit - 1)
        return self._load(list(ids))

    def open_runs(self) -> list[ReportRun]:
        """Runs not yet done (queued or running), oldest first."""
        with _redis_errors():
            ids = self._r.zrange(self._k("reports", "open"), 0, 999)
        return self._load(list(ids))

    def running_on(self, host: str) -> int:
        return sum(1 for r in self.open_runs() if r.host == host and r.status == ReportStatus.RUNNING)

    def image_ids(self) -> set[str]:
        """Every image ID a kept run's record names (``launcher.images`` keeps them)."""
        with _redis_errors():
            ids = self._r.zrange(self._k("reports"), 0, -1)
        return {i for r in self._load(list(ids)) for i in (r.record.get("image_id", ""), r.image) if i}

    def audit(self, action: str, run: ReportRun, *, actor: str, detail: str = "") -> None:
        limit = 4000 if action == "report_provenance" else 500  # a record is about 1 KB of JSON
        self.sessions.record_event(
            action, user=run.user, actor=actor, detail=f"report {run.id} {run.template} {detail}".strip()[:limit]
        )

    # -- schedules ----------------------------------------------------------------------------------
    def add_schedule(self, schedule: ReportSchedule, first_at: float) -> ReportSchedule:
        with _redis_errors():
            pipe = self._r.pipeline()
            pipe.set(self._k("schedule", schedule.id), schedule.to_storage())
            pipe.zadd(self._k("schedules"), {schedule.id: first_at})
            pipe.sadd(self._k("user", schedule.user, "schedules"), schedule.id)
            pipe.execute()
        return schedule

    def get_schedule(self, schedule_id: str) -> ReportSchedule | None:
        with _redis_errors():
            raw = self._r.get(self._k("schedule", schedule_id))
        return ReportSchedule.from_storage(raw) if raw else None

    def remove_schedule(self, schedule: ReportSchedule) -> None:
        with _redis_errors():
            pipe = self._r.pipeline()
            pipe.delete(self._k("schedule", schedule.id))
            pipe.zrem(self._k("schedules"), schedule.id)
            pipe.srem(self._k("user", schedule.user, "schedules"), schedule.id)
            pipe.execute()

    def schedules_for(self, user: str | None = None) -> list[tuple[ReportSchedule, float]]:
        """Schedules (of one user, or all) with when each is next due (epoch seconds), soonest first."""
        with _redis_errors():
            if user is None:
                ids = list(self._r.zrange(self._k("schedules"), 0, -1))
            else:
                ids = sorted(self._r.smembers(self._k("user", user, "schedules")))
            if not ids:
                return []
            raws = self._r.mget([self._k("schedule", i) for i in ids])
            scores = [self._r.zscore(self._k("schedules"), i) for i in ids]
        found = [
            (ReportSchedule.from_storage(raw), float(score or 0))
            for raw, score in zip(raws, scores, strict=True)
            if raw
        ]
        return sorted(found, key=lambda pair: pair[1])

    def note_schedule_run(self, schedule: ReportSchedule, run_id: str) -> None:
        updated = schedule.model_copy(update={"last_run": run_id})
        with _redis_errors():
            self._r.set(self._k("schedule", schedule.id), updated.to_storage(), xx=True)

    def take_due(self, now: float | None = None, most: int = 100) -> list[ReportSchedule]:
        """The schedules due now, each moved on to its next time in the same step."""
        with _redis_errors():
            ids = self._take_due(keys=[self._k("schedules")], args=[now or time.time(), self._p, most])
        found = [self.get_schedule(i) for i in ids]
        return [s for s in found if s is not None]
