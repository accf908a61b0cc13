"""Property-based test of the session state machine against a real Redis (issue 10, "How it is verified")."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from launcher import models
from launcher.adapters.redis_store import SessionStore
from launcher.errors import Conflict, LimitReached, NotFound, RuntimeUnavailable
from launcher.flows import fail, request_stop
from launcher.models import LIVE_STATUSES, Actor, Reason, Role, Session, SessionStatus, new_token
from launcher.policy import Deadlines, ReapPolicy
from launcher.service import LauncherService
from launcher.settings import Settings
from launcher.transitions import (
    TRANSITIONS,
    ActorKind,
    By,
    Command,
    MarkRunning,
    MarkStarting,
    MarkStopped,
    RecordActivity,
    SetPhase,
)
from tests.helpers import RecordingDispatcher, bring_to
from tests.stack import random_instance
from workers.sweeps import reap, sweep_deadlines

Q, S, R, X = SessionStatus.QUEUED, SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.STOPPING
STOPPED, ERROR = SessionStatus.STOPPED, SessionStatus.ERROR

UNIT = timedelta(minutes=1)  # one tick of the simulated clock; every deadline below is a whole number of ticks
RESEND, STOPPING, STARTING, QUEUED = 1, 2, 3, 5  # resend_after and the deadlines of stopping, starting, queued
IDLE, MAX_AGE = 4, 8  # the reaper's idle timeout and maximum age
USERS = ("ann", "bob", "cyd", "dee", "eve")
TEMPLATE = "alpha_research"
OPS = Actor(name="ops", role=Role.ADMIN)
REASONS = {r.value for r in Reason}
ACTOR_FORM = re.compile(rf"(?:{'|'.join(k.value for k in ActorKind)})(?::[a-z0-9][a-z0-9._@-]*)?")
STATUS_ACTIONS = {s.value for s in SessionStatus}
NAMED_ACTIONS = {"keepalive", "max_age_exempt"}
BROKER_DOWN = st.integers(0, 3).map(lambda n: n == 3)  # the task queue refuses every send of this step


class SimClock(datetime):
    """A datetime whose now() is the simulated clock: ``launcher.models.utcnow`` (every timestamp) reads it."""

    current = datetime(2030, 1, 1, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return cls.current if tz is None else cls.current.astimezone(tz)


class Broker(RecordingDispatcher):
    """The recording dispatcher, with a broker that can be down (every send then raises and is not recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refusals: list[tuple[str, str]] = []

    def _send(self, kind: str, session: Session) -> None:
        if self.down:
            self.refusals.append((kind, session.id))
            raise RuntimeUnavailable("the task queue (Redis) is not reachable; try again shortly")

    def start(self, session: Session) -> None:
        self._send("start", session)
        super().start(session)

    def stop(self, session: Session) -> None:
        self._send("stop", session)
        super().stop(session)

    def discard(self, session: Session) -> None:
        self._send("discard", session)
        super().discard(session)


@dataclass(repr=False)
class Model:
    """What the test expects of one session (times in ticks of the simulated clock)."""

    id: str
    user: str
    host: str
    created: int
    status: SessionStatus = Q
    since: int = 0
    started: int | None = None
    active: int | None = None
    busy: int = 0
    exempt: bool = False
    stop_reason: Reason | None = None
    audit: list[tuple[str, str, str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<{self.user}'s {self.id}: {self.status.value} on {self.host}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def change(self, action: str, by: str, reason: Reason, now: int, to: SessionStatus | None = None) -> None:
        """Record one applied command: its audit entry and, for a transition, the status it reached."""
        self.audit.append((action, self.status.value, by, reason.value))
        if to is not None:
            if to != self.status:
                self.since = now
            self.status = to

    def expected(self) -> tuple:
        return (self.user, self.host, self.status, self.stop_reason, self.exempt, self.busy, self.started, self.active)


def having(*statuses: SessionStatus) -> Any:
    """A precondition: some session the test knows is in one of ``statuses``."""
    return precondition(lambda self: any(m.status in statuses for m in self.sessions))


class SessionMachine(RuleBasedStateMachine):
    """Launches, stops, worker events, sweeps, reaps, broker outages and a lost Redis, in any order."""

    def __init__(self, client: redis.Redis, raw: redis.Redis) -> None:
        super().__init__()
        self.client, self.raw = client, raw  # raw: no decoding, for DUMP
        self.store: SessionStore | None = None
        self.sessions: list[Model] = []
        self.orphans: list[Model] = []  # running containers whose records Redis lost (reconcile adopts them)
        self.t = 0
        self.base = datetime.now(UTC).replace(microsecond=0)

    # -- set-up and helpers ------------------------------------------------------------------
    @initialize(n_hosts=st.integers(2, 3), cap=st.integers(2, 4), per_host=st.integers(1, 2))
    def configure(self, n_hosts: int, cap: int, per_host: int) -> None:
        """A fresh instance prefix per example, two or three hosts, small caps."""
        self.hosts = [f"h{i}" for i in range(1, n_hosts + 1)]
        self.settings = Settings(
            instance=random_instance(),
            hosts=",".join(self.hosts),
            max_sessions=cap,
            max_sessions_per_host=per_host,
            resend_after_s=RESEND * UNIT.total_seconds(),
            stopping_deadline_s=STOPPING * UNIT.total_seconds(),
            starting_deadline_s=STARTING * UNIT.total_seconds(),
            queued_deadline_s=QUEUED * UNIT.total_seconds(),
            idle_timeout_s=IDLE * UNIT.total_seconds(),
            max_age_s=MAX_AGE * UNIT.total_seconds(),
            session_record_ttl_s=3600,
        )
        self.prefix = f"{self.settings.instance}:"
        self.store = SessionStore(self.client, self.settings)
        self.broker = Broker()
        self.service = LauncherService(self.settings, self.store, self.broker)
        self.deadlines = Deadlines.from_settings(self.settings)
        self.policy = ReapPolicy.from_settings(self.settings)
        SimClock.current = self.now()

    def teardown(self) -> None:
        if self.store is not None:
            keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                self.client.delete(*keys)

    def now(self) -> datetime:
        return self.base + self.t * UNIT

    def ticks(self, stamp: datetime | None) -> float | None:
        return None if stamp is None else (stamp - self.base) / UNIT

    def with_status(self, *statuses: SessionStatus) -> list[Model]:
        return [m for m in self.sessions if m.status in statuses]

    def live_of(self, user: str) -> Model | None:
        return next((m for m in self.with_status(*LIVE_STATUSES) if m.user == user), None)

    def pick(self, data: st.DataObject, *statuses: SessionStatus) -> Model:
        return data.draw(st.sampled_from(self.with_status(*statuses)))

    def pick_any(self, data: st.DataObject) -> Model:
        """A live session or one of the two that ended last."""
        return data.draw(st.sampled_from(self.with_status(*LIVE_STATUSES) + self.with_status(STOPPED, ERROR)[-2:]))

    def snapshot(self) -> dict[str, Any]:
        """Every key of this instance with its serialized value (DUMP), read in one transaction."""
        keys = sorted(self.raw.scan_iter(match=f"{self.prefix}*", count=1000))
        pipe = self.raw.pipeline()
        for key in keys:
            pipe.dump(key)
        return dict(zip(keys, pipe.execute(), strict=True))

    def refused(self, error: type[Exception], call: Any, match: str | None = None) -> None:
        """``call`` raises ``error`` and changes nothing in Redis (no record, set, lock or audit entry)."""
        before, sent = self.snapshot(), len(self.broker.sent)
        with pytest.raises(error, match=match):
            call()
        assert self.snapshot() == before
        assert len(self.broker.sent) == sent

    def sent_during(self, call: Any) -> tuple[Any, list[tuple]]:
        mark = len(self.broker.sent)
        result = call()
        return result, sorted(self.broker.sent[mark:])

    def expect_stop(self, m: Model, by: str, reason: Reason) -> None:
        m.change("stopping", by, reason, self.t, X)
        m.stop_reason = reason

    def expect_fail(self, m: Model, by: str, reason: Reason) -> None:
        m.change("error", by, reason, self.t, ERROR)
        m.stop_reason = reason

    def sends(self, *sends: tuple) -> list[tuple]:
        return [] if self.broker.down else sorted(sends)

    # -- the console and the CLI ---------------------------------------------------------------
    @rule(user=st.sampled_from(USERS), by_admin=st.booleans(), broker_down=BROKER_DOWN)
    def launch(self, user: str, by_admin: bool, broker_down: bool) -> None:
        """A user (or an admin for them) launches: refused by the user lock or a cap, else placed and sent."""
        self.broker.down = broker_down
        actor = OPS if by_admin else Actor(name=user, role=Role.RESEARCHER)
        by = f"admin:{OPS.name}" if by_admin else f"user:{user}"
        live = self.with_status(*LIVE_STATUSES)
        loads = {h: sum(m.host == h for m in live) for h in self.hosts}
        room = [h for h in self.hosts if loads[h] < self.settings.max_sessions_per_host]
        call = lambda: self.service.launch(actor, TEMPLATE, user=user)  # noqa: E731
        if self.live_of(user) is not None:
            return self.refused(Conflict, call, "already has a live notebook session")
        if len(live) >= self.settings.max_sessions:
            return self.refused(LimitReached, call, "concurrent sessions")
        if not room:
            return self.refused(LimitReached, call, "every Docker host")
        host = min(room, key=loads.__getitem__)  # the least loaded, the first in order on a tie
        if self.broker.down:
            with pytest.raises(RuntimeUnavailable):
                call()
            kind, sid = self.broker.refusals[-1]
            assert kind == "start"
        else:
            session, sent = self.sent_during(call)
            sid = session.id
            assert (session.host, sent) == (host, [("start", sid, host)])
        m = Model(id=sid, user=user, host=host, created=self.t, since=self.t)
        m.audit.append(("queued", "", by, Reason.LAUNCH.value))
        self.sessions.append(m)
        if self.broker.down:  # the end state first: no seat, no lock left behind
            self.expect_fail(m, "launcher", Reason.DISPATCH_FAILED)
        return None

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), who=st.sampled_from(["owner", "admin", "reaper"]), broker_down=BROKER_DOWN)
    def stop(self, data: st.DataObject, who: str, broker_down: bool) -> None:
        """The one stop path: the owner (their live session), an admin (a session by id) or the reaper."""
        self.broker.down = broker_down
        m = self.pick_any(data)
        if who == "owner":
            owner = Actor(name=m.user, role=Role.RESEARCHER)
            call = lambda: self.service.stop(owner)  # noqa: E731
            by, reason, m = f"user:{m.user}", Reason.USER, self.live_of(m.user)
            if m is None:
                return self.refused(NotFound, call, "has no live notebook session")
        elif who == "admin":
            call = lambda: self.service.stop(OPS, session_id=m.id)  # noqa: E731
            by, reason = f"admin:{OPS.name}", Reason.ADMIN
            if not m.status.live:
                return self.refused(NotFound, call, "no live session")
        else:
            reason = data.draw(st.sampled_from([Reason.IDLE, Reason.MAX_AGE]))
            call = lambda: request_stop(self.store, self.broker, m.id, By(ActorKind.REAPER), reason)  # noqa: E731
            by = "reaper"
        if m.status not in (Q, S, R):
            return self.refused(Conflict, call, "RequestStop does not apply")
        _, sent = self.sent_during(call)
        assert sent == self.sends(("stop", m.id))
        self.expect_stop(m, by, reason)
        return None

    @having(Q, S, R)
    @rule(broker_down=BROKER_DOWN)
    def stop_all(self, broker_down: bool) -> None:
        """An admin stops everything: every queued, starting or running session moves to stopping in one batch."""
        self.broker.down = broker_down
        targets = self.with_status(Q, S, R)
        batch, sent = self.sent_during(lambda: self.service.stop_all(OPS))
        assert sent == self.sends(*(("stop", m.id) for m in targets))
        for m in targets:
            self.expect_stop(m, f"admin:{OPS.name}", Reason.ADMIN)
        progress = self.service.stop_all_progress(OPS, batch)
        assert (progress.total, progress.done) == (len(targets), 0)

    @having(R)
    @rule(user=st.sampled_from(USERS))
    def keep_alive(self, user: str) -> None:
        """The owner says "keep running": activity now, audited; refused unless the session is running."""
        call = lambda: self.service.keep_alive(Actor(name=user, role=Role.RESEARCHER))  # noqa: E731
        m = self.live_of(user)
        if m is None or m.status != R:
            return self.refused(NotFound, call)
        call()
        m.change("keepalive", f"user:{user}", Reason.KEEPALIVE, self.t)
        assert m.active is not None
        m.active = max(m.active, self.t)  # kept only when newer
        return None

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), exempt=st.booleans())
    def exempt(self, data: st.DataObject, exempt: bool) -> None:
        """An admin exempts a session from the maximum age (or returns it to it); refused once it is stopping."""
        m = self.pick_any(data)
        call = lambda: self.service.set_max_age_exempt(OPS, m.id, exempt)  # noqa: E731
        if m.status not in (Q, S, R):
            return self.refused(Conflict, call)
        call()
        m.change("max_age_exempt", f"admin:{OPS.name}", Reason.EXEMPT, self.t)
        m.exempt = exempt
        return None

    # -- the worker of the session's host ------------------------------------------------------
    def take(self, m: Model) -> None:
        by = By(ActorKind.WORKER, m.host)
        self.store.apply(m.id, MarkStarting(by=by, reason=Reason.START))
        m.change("starting", str(by), Reason.START, self.t, S)

    def phase(self, m: Model) -> None:
        phase = SetPhase(by=By(ActorKind.WORKER, m.host), reason=Reason.START, phase="waiting", container_id="c1")
        assert self.store.apply(m.id, phase).phase == "waiting"

    def ready(self, m: Model) -> None:
        by = By(ActorKind.WORKER, m.host)
        self.store.apply(m.id, MarkRunning(by=by, reason=Reason.READY, url=f"http://{m.id}.nb.localhost"))
        m.change("running", str(by), Reason.READY, self.t, R)
        m.started = m.active = self.t

    @having(Q, S)
    @rule(data=st.data())
    def worker_takes(self, data: st.DataObject) -> None:
        """The host's worker takes the start (again, for a second delivery of the same task)."""
        self.take(self.pick(data, Q, S))

    @having(S)
    @rule(data=st.data())
    def worker_phase(self, data: st.DataObject) -> None:
        """The worker reports its progress and the container id: no status change, no audit entry."""
        self.phase(self.pick(data, S))

    @having(S)
    @rule(data=st.data())
    def worker_ready(self, data: st.DataObject) -> None:
        """Jupyter answered: the session is running, started and active now."""
        self.ready(self.pick(data, S))

    @having(Q)
    @rule(data=st.data())
    def worker_starts_it(self, data: st.DataObject) -> None:
        """A whole start in one step, as the worker's start task runs it: starting, its phase, running."""
        m = self.pick(data, Q)
        self.take(m)
        self.phase(m)
        self.ready(m)

    @having(R)
    @rule(data=st.data(), ago=st.none() | st.integers(-2, 3), busy=st.integers(0, 2))
    def heartbeat(self, data: st.DataObject, ago: int | None, busy: int) -> None:
        """A heartbeat records busy kernels and the last activity (kept only when newer); no audit entry."""
        m = self.pick(data, R)
        at = None if ago is None else self.now() - ago * UNIT
        command = RecordActivity(
            by=By(ActorKind.WORKER, m.host), reason=Reason.ACTIVITY, last_activity_at=at, kernels_busy=busy
        )
        self.store.apply(m.id, command)
        m.busy = busy
        if ago is not None and (m.active is None or self.t - ago > m.active):
            m.active = self.t - ago

    @having(X)
    @rule(data=st.data())
    def worker_stopped(self, data: st.DataObject) -> None:
        """The worker removed the container: stopped, for the reason the stop was asked."""
        m = self.pick(data, X)
        by = By(ActorKind.WORKER, m.host)
        assert m.stop_reason is not None
        self.store.apply(m.id, MarkStopped(by=by, reason=m.stop_reason))
        m.change("stopped", str(by), m.stop_reason, self.t, STOPPED)

    @precondition(lambda self: self.sessions)
    @rule(
        data=st.data(),
        reason=st.sampled_from([Reason.START_FAILED, Reason.DIED, Reason.OOM, Reason.LOST]),
        starting_only=st.booleans(),
        broker_down=BROKER_DOWN,
    )
    def worker_fails(self, data: st.DataObject, reason: Reason, starting_only: bool, broker_down: bool) -> None:
        """The one fail path (FailStart while starting, MarkFailed for any live one); a no-op on anything else."""
        self.broker.down = broker_down
        m = self.pick_any(data)
        by = By(ActorKind.WORKER, m.host)
        call = lambda: fail(self.store, self.broker, m.id, by, reason, "it broke", starting_only=starting_only)  # noqa: E731
        if m.status not in ((Q, S) if starting_only else LIVE_STATUSES):
            before = self.snapshot()
            assert call().status == m.status
            assert self.snapshot() == before
            return
        ended, sent = self.sent_during(call)
        assert ended.status == ERROR and sent == self.sends(("discard", m.id))
        self.expect_fail(m, str(by), reason)

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), unknown=st.booleans())
    def command_not_allowed(self, data: st.DataObject, unknown: bool) -> None:
        """A command in a status that does not allow it is a Conflict, on an unknown session NotFound: nothing changes."""
        m = self.pick_any(data)
        kind: type[Command] = data.draw(
            st.sampled_from([c for c, (src, _) in TRANSITIONS.items() if unknown or m.status not in src])
        )
        command = kind(by=By(ActorKind.WORKER, m.host), reason=Reason.START)
        if unknown:
            self.refused(NotFound, lambda: self.store.apply("zzzzzzzzzzzz", command), "no session")
        else:
            self.refused(Conflict, lambda: self.store.apply(m.id, command), f"is {m.status.value}: {kind.__name__}")

    # -- time, the periodic sweeps and outages --------------------------------------------------
    @having(*LIVE_STATUSES)
    @rule(ticks=st.integers(1, 6))
    def clock(self, ticks: int) -> None:
        """Time passes."""
        self.t += ticks
        SimClock.current = self.now()

    @having(Q, S, X)
    @rule(broker_down=BROKER_DOWN)
    def deadline_sweep(self, broker_down: bool) -> None:
        """The deadline sweep at the simulated now: resends, ends past-deadline sessions with their reason."""
        self.broker.down = broker_down
        expected: list[tuple] = []
        for m in self.with_status(*LIVE_STATUSES):
            waited = self.t - m.since
            if m.status == Q and waited >= QUEUED:
                self.expect_fail(m, "sweeper", Reason.NO_WORKER)
                expected.append(("discard", m.id))
            elif m.status == Q and waited >= RESEND:
                expected.append(("start", m.id, m.host))
            elif m.status == S and waited >= STARTING:
                self.expect_fail(m, "sweeper", Reason.START_TIMEOUT)
                expected.append(("discard", m.id))
            elif m.status == X and waited >= STOPPING:
                assert m.stop_reason is not None
                m.change("stopped", "sweeper", m.stop_reason, self.t, STOPPED)
                expected.append(("discard", m.id))
            elif m.status == X and waited >= RESEND:
                expected.append(("stop", m.id))
        _, sent = self.sent_during(lambda: sweep_deadlines(self.store, self.broker, self.deadlines, now=self.now()))
        assert sent == self.sends(*expected)

    @having(R)
    @rule(broker_down=BROKER_DOWN)
    def reaper(self, broker_down: bool) -> None:
        """The reaper at the simulated now: the maximum age (unless exempt), else idleness unless a kernel is busy."""
        self.broker.down = broker_down
        reaped = []
        for m in self.with_status(R):
            assert m.started is not None and m.active is not None
            if not m.exempt and self.t - m.started >= MAX_AGE:
                reaped.append((m, Reason.MAX_AGE))
            elif m.busy == 0 and self.t - m.active >= IDLE:
                reaped.append((m, Reason.IDLE))
        ids, sent = self.sent_during(lambda: reap(self.store, self.policy, self.broker, now=self.now()))
        assert sorted(ids) == sorted(m.id for m, _ in reaped)
        assert sent == self.sends(*(("stop", m.id) for m, _ in reaped))
        for m, reason in reaped:
            self.expect_stop(m, "reaper", reason)

    @having(R)
    @rule()
    def redis_loses_everything(self) -> None:
        """Redis restarts without its data (every key of the instance is gone) while the running containers remain."""
        keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=1000))
        self.client.delete(*keys)
        self.orphans += self.with_status(R)
        self.sessions = []

    def adoptable(self) -> list[Model]:
        """Lost running sessions whose adoption fits both caps (over them adopt refuses: see the test below)."""
        live = self.with_status(*LIVE_STATUSES)
        if len(live) >= self.settings.max_sessions:
            return []
        per_host = self.settings.max_sessions_per_host
        return [o for o in self.orphans if sum(m.host == o.host for m in live) < per_host]

    @precondition(lambda self: self.adoptable())
    @rule(data=st.data())
    def reconcile_adopts(self, data: st.DataObject) -> None:
        """Reconcile rebuilds a lost running session from its container: adopted unless its user holds another."""
        o = data.draw(st.sampled_from(self.adoptable()))
        self.orphans.remove(o)  # adopted, or its container removed
        created = self.base + o.created * UNIT
        rebuilt = Session(
            id=o.id,
            user=o.user,
            template=TEMPLATE,
            status=R,
            host=o.host,
            container_id="c1",
            token=new_token(),
            url=f"http://{o.id}.nb.localhost",
            created_at=created,
            started_at=created,
            last_activity_at=self.now(),
        )
        actor = str(By(ActorKind.RECONCILER, o.host))
        if self.live_of(o.user) is not None:
            before = self.snapshot()
            assert self.store.adopt(rebuilt, actor=actor) is False
            assert self.snapshot() == before
            return
        assert self.store.adopt(rebuilt, actor=actor) is True
        m = Model(id=o.id, user=o.user, host=o.host, created=o.created, status=R, since=self.t)
        m.started, m.active = o.created, self.t
        m.audit.append(("adopted", "", actor, Reason.RECONCILE.value))
        self.sessions.append(m)

    # -- invariants, read from Redis itself ----------------------------------------------------
    @invariant()
    def redis_keeps_the_invariants(self) -> None:
        """Per-user limit, caps, sets, user locks and the audit stream, as Redis holds them, and the model."""
        if self.store is None:
            return
        p, cap, per_host = self.prefix, self.settings.max_sessions, self.settings.max_sessions_per_host
        keys = set(self.client.scan_iter(match=f"{p}*", count=1000))
        session_keys = sorted(k for k in keys if k.startswith(f"{p}session:"))
        host_keys = [f"{p}host:{h}:live" for h in self.hosts]
        assert {k for k in keys if k.startswith(f"{p}host:")} <= set(host_keys)
        pipe = self.client.pipeline()  # one consistent view (MULTI/EXEC)
        for key in session_keys:
            pipe.get(key)
        for user in USERS:
            pipe.get(f"{p}user:{user}")
        pipe.smembers(f"{p}live").scard(f"{p}live")
        for key in host_keys:
            pipe.smembers(key)
        pipe.xrange(f"{p}audit")
        replies = iter(pipe.execute())
        records = {s.id: s for s in (Session.from_storage(next(replies)) for _ in session_keys)}
        locks = {user: next(replies) for user in USERS}
        live_set, live_count = next(replies), next(replies)
        host_sets = {h: next(replies) for h in self.hosts}
        audit = next(replies)

        live = {sid: s for sid, s in records.items() if s.status.live}
        observed = {
            sid: (s.user, s.host, s.status, s.stop_reason, s.max_age_exempt, s.kernels_busy)
            + (self.ticks(s.started_at), self.ticks(s.last_activity_at))
            for sid, s in records.items()
        }
        assert observed == {m.id: m.expected() for m in self.sessions}
        for user in USERS:
            mine = [sid for sid, s in live.items() if s.user == user]
            assert len(mine) <= 1, f"{user} has {len(mine)} live sessions"
            assert locks[user] == (mine[0] if mine else None)
        assert live_set == set(live) and live_count == len(live)
        ended = set(records) - set(live)
        assert not ended & live_set and not any(ended & members for members in host_sets.values())
        assert live_count <= cap
        for h, members in host_sets.items():
            assert members == {sid for sid, s in live.items() if s.host == h}
            assert len(members) <= per_host
        entries: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
        for _, f in audit:
            assert f["reason"] in REASONS and ACTOR_FORM.fullmatch(f["actor"]), f
            assert f["action"] in STATUS_ACTIONS | NAMED_ACTIONS | {"adopted"}, f
            entries[f["session_id"]].append((f["action"], f["previous"], f["actor"], f["reason"]))
        for sid, trail in entries.items():  # one entry per status change, chained from the first to the record's
            status = None
            for action, previous, _, _ in trail:
                if status is None:
                    assert (action, previous) in (("queued", ""), ("adopted", "")), trail
                    status = "queued" if action == "queued" else "running"
                else:
                    assert previous == status, trail
                    status = action if action in STATUS_ACTIONS else status
            assert sid in records and records[sid].status.value == status, trail
        assert dict(entries) == {m.id: m.audit for m in self.sessions}


def test_random_interleavings_keep_the_invariants(redis_url, monkeypatch):
    """Random interleavings of every command, event, sweep and outage never break the store's invariants."""
    monkeypatch.setattr(models, "datetime", SimClock)
    client, raw = redis.Redis.from_url(redis_url, decode_responses=True), redis.Redis.from_url(redis_url)
    try:
        run_state_machine_as_test(
            lambda: SessionMachine(client, raw),
            settings=hsettings(
                max_examples=100,
                stateful_step_count=50,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        client.close()
        raw.close()


def test_adoption_after_redis_lost_its_data_keeps_the_caps(redis_url):
    """A running session adopted back after Redis lost its data never takes the live count over either cap."""
    settings = Settings(instance=random_instance(), hosts="h1,h2", max_sessions=2, max_sessions_per_host=1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = SessionStore(client, settings)
    service = LauncherService(settings, store, RecordingDispatcher())
    try:
        bob = service.launch(Actor(name="bob", role=Role.RESEARCHER), TEMPLATE)
        running = bring_to(store, bob.id, R)  # on h1
        client.delete(*client.scan_iter(match=f"{settings.instance}:*"))  # Redis restarted without its data
        for user in ("ann", "cyd"):  # h1 and h2: both caps reached
            service.launch(Actor(name=user, role=Role.RESEARCHER), TEMPLATE)
        store.adopt(running, actor=str(By(ActorKind.RECONCILER, "h1")))
        assert store.count_live() <= settings.max_sessions
        assert all(len(store.list_live(h)) <= settings.max_sessions_per_host for h in settings.hosts)
    finally:
        if keys := list(client.scan_iter(match=f"{settings.instance}:*")):
            client.delete(*keys)
        client.close()
