"""What a host's worker does for one session: start, stop, recover. Tasks call these.

Every step is idempotent: the container's name derives from the session id (a retried start adopts
it), every store write is a compare-and-set on the status (a stop that lands mid-start wins, and the
start removes what it made), and stopping something already stopped does nothing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from launcher.dispatch import Dispatcher
from launcher.errors import Conflict, LauncherError, NotFound
from launcher.jupyter import PROBE_DEADLINE_S, NoAnswer, wait_ready
from launcher.logs import event
from launcher.models import Session, SessionStatus, StopReason, utcnow
from launcher.policy import ReapPolicy, Verdict, should_reap
from launcher.settings import Settings
from launcher.spec import LABEL_PREFIX, build_container_spec, container_name
from launcher.store import SessionStore
from launcher.validation import validate_template_name, validate_user_id
from workers import hostfs, quota
from workers.activity import Activity, probe
from workers.runtime import ContainerState, Runtime

log = logging.getLogger("launcher.worker")
ONLY_STARTING = frozenset({SessionStatus.STARTING})


@dataclass
class WorkerContext:
    settings: Settings
    store: SessionStore
    runtime: Runtime

    @property
    def actor(self) -> str:
        return f"worker:{self.settings.host_name}"


def _socket_path(ctx: WorkerContext, session_id: str):
    """The locked socket of a running session (raises OSError for anything else at that path)."""
    return hostfs.checked_socket(ctx.settings, session_id)


def _discard(ctx: WorkerContext, session_id: str, user: str | None) -> None:
    ctx.runtime.stop(container_name(ctx.settings, session_id), timeout=0)
    hostfs.remove_rundir(ctx.settings, session_id)
    if user:
        quota.detach(ctx.settings, user)


def start(ctx: WorkerContext, session_id: str) -> Session | None:
    """Bring the session's container up and mark it running, or end in ``error`` leaving nothing behind."""
    session = ctx.store.get(session_id)
    if session is None:
        event(log, "session.start_skipped", session_id=session_id, why="unknown session")
        return None
    if session.status not in (SessionStatus.QUEUED, SessionStatus.STARTING):
        # Duplicate delivery after success, or a stop that came first: nothing to start.
        event(log, "session.start_skipped", session_id=session_id, status=session.status.value)
        return session
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    fields = {"session_id": session_id, "user": session.user, "host": ctx.settings.host_name}
    try:
        session = ctx.store.transition(
            session_id, SessionStatus.STARTING, actor=ctx.actor, reason="start", phase="preparing workspace"
        )
        hostfs.check_notebook_identity(ctx.settings)
        workspace = hostfs.prepare_workspace(ctx.settings, session.user)
        if quota.filesystem_mode(ctx.settings):
            quota.attach(ctx.settings, session.user, workspace)
        ctx.store.set_usage(session.user, quota.measure(ctx.settings, workspace))
        hostfs.copy_template(ctx.settings, session.template, workspace)
        rundir = hostfs.prepare_rundir(ctx.settings, session_id, session.token.get_secret_value())
        spec = build_container_spec(session, ctx.settings, workspace=workspace, rundir=rundir)
        timings["prepare"] = time.monotonic() - t0
        handle = ctx.runtime.start(spec)
        timings["container"] = time.monotonic() - t0 - timings["prepare"]
        ctx.store.transition(
            session_id,
            None,
            actor=ctx.actor,
            expected=ONLY_STARTING,
            container_id=handle.id,
            phase="waiting for Jupyter",
        )
        timings["jupyter"] = wait_ready(
            hostfs.socket_path(ctx.settings, session_id),
            session.token.get_secret_value(),
            timeout=ctx.settings.start_timeout_s,
            still_alive=lambda: ctx.runtime.state(handle.name) == ContainerState.RUNNING,
        )
        hostfs.lock_socket(ctx.settings, session_id)
        hostfs.retire_secret(ctx.settings, session_id)
        now = utcnow()
        session = ctx.store.transition(
            session_id,
            SessionStatus.RUNNING,
            actor=ctx.actor,
            reason="ready",
            url=ctx.settings.session_origin(session_id),
            started_at=now,
            last_activity_at=now,
            phase=None,
        )
    except Conflict:
        # The state moved under us. A stop that arrived mid-start wins: remove what this start made.
        # But if another delivery of this same start finished first (running), its container is ours
        # too (same name): leave it alone.
        current = ctx.store.get(session_id)
        if current is None or current.status not in (SessionStatus.RUNNING, SessionStatus.STARTING):
            _discard(ctx, session_id, fields["user"])
        event(log, "session.start_superseded", **fields, status=current.status.value if current else "gone")
        return current
    except LauncherError as exc:
        return _fail_start(ctx, session_id, exc.user_message, exc.log_message, fields)
    except Exception as exc:  # an unexpected bug must still not leave a container or a stuck session
        log.exception("session.start_crashed session_id=%s", session_id)
        return _fail_start(ctx, session_id, "the notebook failed to start (internal error)", repr(exc), fields)
    timings["total"] = time.monotonic() - t0
    event(
        log,
        "session.ready",
        **fields,
        adopted=handle.adopted,
        **{f"{k}_s": round(v, 3) for k, v in timings.items()},
    )
    return session


def _fail_start(
    ctx: WorkerContext, session_id: str, user_message: str, log_message: str, fields: dict
) -> Session | None:
    _discard(ctx, session_id, fields.get("user"))
    event(log, "session.start_failed", level=logging.WARNING, **fields, error=log_message)
    try:
        return ctx.store.transition(
            session_id,
            SessionStatus.ERROR,
            actor=ctx.actor,
            reason=StopReason.START_FAILED.value,
            detail=user_message,
            error=user_message,
            stop_reason=StopReason.START_FAILED,
            stopped_at=utcnow(),
            phase=None,
        )
    except (Conflict, NotFound):
        return ctx.store.get(session_id)


def stop(ctx: WorkerContext, session_id: str, actor: str, reason: str) -> Session | None:
    """Stop and remove the container, then mark the session stopped. Safe to repeat."""
    session = ctx.store.get(session_id)
    if session is None:
        return None
    if session.status in (SessionStatus.STOPPED, SessionStatus.ERROR):
        _discard(ctx, session_id, session.user)  # idempotent clean-up
        return session
    t0 = time.monotonic()
    if session.status != SessionStatus.STOPPING:
        session = ctx.store.transition(
            session_id, SessionStatus.STOPPING, actor=actor, reason=reason, stop_reason=_stop_reason(reason)
        )
    ctx.runtime.stop(container_name(ctx.settings, session_id), timeout=ctx.settings.stop_timeout_s)
    hostfs.remove_rundir(ctx.settings, session_id)
    quota.detach(ctx.settings, session.user)
    try:
        session = ctx.store.transition(
            session_id,
            SessionStatus.STOPPED,
            actor=actor,
            reason=reason,
            expected={SessionStatus.STOPPING},
            stopped_at=utcnow(),
            stop_reason=_stop_reason(reason),
            phase=None,
        )
    except Conflict:
        session = ctx.store.get(session_id) or session
    event(
        log,
        "session.stopped",
        session_id=session_id,
        user=session.user,
        host=ctx.settings.host_name,
        actor=actor,
        reason=reason,
        stop_s=round(time.monotonic() - t0, 3),
    )
    return session


def _stop_reason(reason: str) -> StopReason:
    try:
        return StopReason(reason)
    except ValueError:
        return StopReason.ADMIN


def unfinished(ctx: WorkerContext) -> tuple[list[str], list[str]]:
    """Sessions on this host left mid-start or mid-stop (e.g. by a worker that died): (starting, stopping)."""
    live = ctx.store.list_live(ctx.settings.host_name)
    return (
        [s.id for s in live if s.status == SessionStatus.STARTING],
        [s.id for s in live if s.status == SessionStatus.STOPPING],
    )


# -- heartbeat, reap, reconcile ------------------------------------------------------------------

_DEATH = {
    ContainerState.OOM_KILLED: (StopReason.OOM, "the notebook was stopped: it ran out of memory (its limit is {mem})"),
    ContainerState.EXITED: (StopReason.DIED, "the notebook container exited unexpectedly"),
    ContainerState.MISSING: (StopReason.LOST, "the notebook container disappeared"),
}


def mark_dead(ctx: WorkerContext, session: Session, state: ContainerState) -> Session | None:
    """A running session whose container is gone: record why, clean up what is left."""
    reason, message = _DEATH.get(state, (StopReason.DIED, "the notebook container stopped answering"))
    message = message.format(mem=ctx.settings.mem_limit)
    _discard(ctx, session.id, session.user)
    try:
        dead = ctx.store.transition(
            session.id,
            SessionStatus.ERROR,
            actor=ctx.actor,
            reason=reason.value,
            detail=message,
            expected={SessionStatus.RUNNING},
            error=message,
            stop_reason=reason,
            stopped_at=utcnow(),
            phase=None,
        )
    except (Conflict, NotFound):
        return None
    event(
        log, "session.died", session_id=session.id, user=session.user, host=ctx.settings.host_name, reason=reason.value
    )
    return dead


SWEEP_DEADLINE_MAX_S = 60.0  # the probes of one sweep never take longer, whatever the interval


def sweep_deadline_for(settings: Settings, probe_deadline: float = PROBE_DEADLINE_S) -> float:
    """How long one sweep's probes may take: half the heartbeat interval, at least two probes, at most 60 s."""
    return min(SWEEP_DEADLINE_MAX_S, max(2 * probe_deadline, settings.heartbeat_interval_s / 2))


def _probe_all(
    ctx: WorkerContext, sessions: list[Session], max_parallel: int, probe_deadline: float, until: float
) -> dict[str, Activity | Exception | None]:
    """Probe in parallel until ``until`` (monotonic): per session an ``Activity``, the error of a server
    that did not answer, or None when its probe never started (no time was left).

    No probe outlives ``until`` by more than a moment (each gets at most the time left), and the pool is
    not waited for past it: a probe still running then is abandoned and counts as not answering.
    """

    def look(session: Session) -> Activity | Exception | None:
        left = until - time.monotonic()
        if left <= 0:
            return None
        try:
            path = _socket_path(ctx, session.id)
            return probe(path, session.token.get_secret_value(), deadline=min(probe_deadline, left))
        except Exception as exc:  # noqa: BLE001 - any failure means "did not answer"; the container decides
            return exc

    pool = ThreadPoolExecutor(max_workers=min(max_parallel, len(sessions)), thread_name_prefix="heartbeat-probe")
    try:
        futures = [(s.id, pool.submit(look, s)) for s in sessions]
        wait([f for _, f in futures], timeout=max(0.0, until - time.monotonic()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    looks: dict[str, Activity | Exception | None] = {}
    for sid, future in futures:
        if future.cancelled():
            looks[sid] = None
        elif future.done():
            looks[sid] = future.result()
        else:
            looks[sid] = NoAnswer("still probing at the sweep deadline (abandoned)")
    return looks


def _record(ctx: WorkerContext, session: Session, **patch: Any) -> bool:
    """Patch a still-running session's activity fields (no audit entry); False when it stopped meanwhile."""
    try:
        ctx.store.transition(
            session.id, None, actor=ctx.actor, expected={SessionStatus.RUNNING}, audit_action="", **patch
        )
    except (Conflict, NotFound):
        return False
    return True


def heartbeat(
    ctx: WorkerContext,
    max_parallel: int = 32,
    probe_deadline: float = PROBE_DEADLINE_S,
    sweep_deadline: float | None = None,
) -> dict[str, int]:
    """Read every running session's activity on this host in parallel, store it, detect dead containers.

    Bounded whatever the notebooks' servers do: each probe has ``probe_deadline``, all probes together
    ``sweep_deadline`` (default ``sweep_deadline_for``), and looking up the containers of silent servers
    stops after as long again. A server that did not answer while its container runs is ``unreachable``
    and stored with no busy kernel, so a hung server is not held busy forever; ``skipped`` sessions got
    no probe in time and are left as they were.
    """
    t0 = time.monotonic()
    if sweep_deadline is None:
        sweep_deadline = sweep_deadline_for(ctx.settings, probe_deadline)
    sessions = [s for s in ctx.store.list_live(ctx.settings.host_name) if s.status == SessionStatus.RUNNING]
    counts = {"running": len(sessions), "updated": 0, "dead": 0, "unreachable": 0, "skipped": 0}
    if not sessions:
        return counts
    looks = _probe_all(ctx, sessions, max_parallel, probe_deadline, t0 + sweep_deadline)
    lookups_until = t0 + 2 * sweep_deadline
    runtime_answers = True
    for session in sessions:
        seen = looks[session.id]
        if seen is None:
            counts["skipped"] += 1
        elif isinstance(seen, Activity):
            newer = {"last_activity_at": seen.last_activity} if seen.last_activity else None
            if _record(ctx, session, newer=newer, kernels_busy=seen.kernels_busy, connections=seen.connections):
                counts["updated"] += 1
        else:
            state = None  # unknown: the runtime failed or the time for lookups is over
            if runtime_answers and time.monotonic() < lookups_until:
                try:
                    state = ctx.runtime.state(container_name(ctx.settings, session.id))
                except LauncherError as exc:
                    runtime_answers = False
                    event(log, "heartbeat.runtime_failed", level=logging.WARNING, error=exc.log_message)
            if state in (None, ContainerState.RUNNING):
                counts["unreachable"] += 1
                _record(ctx, session, kernels_busy=0)
                continue
            try:
                if mark_dead(ctx, session, state) is not None:
                    counts["dead"] += 1
            except Exception:  # one session's clean-up must not stop the sweep; the next one retries
                log.exception("heartbeat.mark_dead_failed session_id=%s", session.id)
    if counts["unreachable"] or counts["skipped"]:
        level = logging.WARNING if counts["skipped"] else logging.INFO
        took = round(time.monotonic() - t0, 3)
        event(log, "heartbeat.swept", level=level, host=ctx.settings.host_name, seconds=took, **counts)
    return counts


def reap(store: SessionStore, policy: ReapPolicy, dispatcher: Dispatcher, now: datetime | None = None) -> list[str]:
    """Stop every running session the policy says to reap; returns their ids."""
    now = now or utcnow()
    reaped = []
    for session in store.list_live():
        decision = should_reap(session, now, policy)
        if decision.verdict != Verdict.REAP:
            continue
        assert decision.reason is not None
        try:
            session = store.transition(
                session.id,
                SessionStatus.STOPPING,
                actor="reaper",
                reason=decision.reason.value,
                detail=decision.why,
                expected={SessionStatus.RUNNING},
                stop_reason=decision.reason,
                stop_requested_by="reaper",
            )
        except (Conflict, NotFound):
            continue
        dispatcher.stop(session, "reaper", decision.reason.value)
        event(
            log,
            "session.reap",
            session_id=session.id,
            user=session.user,
            reason=decision.reason.value,
            why=decision.why,
        )
        reaped.append(session.id)
    return reaped


def _rebuild(ctx: WorkerContext, labels: dict[str, str], container_id: str, token: str) -> Session | None:
    try:
        sid = labels[f"{LABEL_PREFIX}.session"]
        created = datetime.fromisoformat(labels[f"{LABEL_PREFIX}.created"])
        return Session(
            id=sid,
            user=validate_user_id(labels[f"{LABEL_PREFIX}.user"]),
            template=validate_template_name(labels[f"{LABEL_PREFIX}.template"]),
            status=SessionStatus.RUNNING,
            host=ctx.settings.host_name,
            container_id=container_id,
            token=token,
            url=ctx.settings.session_origin(sid),
            created_at=created,
            started_at=created,
            last_activity_at=utcnow(),
        )
    except (KeyError, ValueError, LauncherError):
        return None


def reconcile(ctx: WorkerContext) -> dict[str, int]:
    """Make this host's containers and Redis agree.

    A labelled container whose session Redis lost is adopted back when the session can be rebuilt
    from its labels and its Jupyter answers with the token it carries; otherwise it is removed, as is
    any container whose session has ended. A running session whose container is gone is marked.
    """
    host = ctx.settings.host_name
    counts = {"adopted": 0, "removed": 0, "marked": 0}
    containers = [
        c for c in ctx.runtime.list_managed(ctx.settings.instance) if c.labels.get(f"{LABEL_PREFIX}.host") == host
    ]
    for c in containers:
        session = ctx.store.get(c.session_id) if c.session_id else None
        if session is not None and session.status.live:
            continue
        if session is None and c.state == ContainerState.RUNNING:
            token = hostfs.read_secret(ctx.settings, c.session_id) if c.session_id else ""
            rebuilt = _rebuild(ctx, c.labels, c.id, token) if token else None
            if rebuilt is not None:
                try:
                    probe(_socket_path(ctx, rebuilt.id), token, deadline=2.0)
                    answers = True
                except Exception:  # noqa: BLE001
                    answers = False
                if answers and ctx.store.adopt(rebuilt, actor=ctx.actor):
                    counts["adopted"] += 1
                    event(log, "session.adopted", session_id=rebuilt.id, user=rebuilt.user, host=host)
                    continue
        if c.session_id:
            _discard(ctx, c.session_id, c.labels.get(f"{LABEL_PREFIX}.user"))
        else:
            ctx.runtime.stop(c.name, timeout=0)
        counts["removed"] += 1
        event(log, "container.orphan_removed", name=c.name, host=host)
    states = {c.session_id: c.state for c in containers}
    live = ctx.store.list_live(host)
    for session in live:
        if session.status == SessionStatus.RUNNING:
            state = states.get(session.id, ContainerState.MISSING)
            if state != ContainerState.RUNNING and mark_dead(ctx, session, state) is not None:
                counts["marked"] += 1
    # Workspace images still mounted for users with nothing live here (a worker died mid-stop).
    busy = {s.user for s in live}
    for user in quota.mounted_users(ctx.settings):
        if user not in busy:
            quota.detach(ctx.settings, user)
            counts["released"] = counts.get("released", 0) + 1
    return counts


def measure_workspaces(ctx: WorkerContext) -> dict[str, int]:
    """Record the workspace usage of every user with a live session on this host (for the console,
    and for launches above the quota where the filesystem does not enforce it)."""
    users = {s.user for s in ctx.store.list_live(ctx.settings.host_name)}
    over = 0
    for user in sorted(users):
        try:
            workspace = hostfs.prepare_workspace(ctx.settings, user)
        except LauncherError:
            continue
        usage = quota.measure(ctx.settings, workspace)
        ctx.store.set_usage(user, usage)
        over += usage.over
    return {"measured": len(users), "over": over}
