"""What a host's worker does for one session: start, stop, recover. Tasks call these.

Every step is idempotent: the container's name derives from the session id (a retried start adopts
it), every store write is a compare-and-set on the status (a stop that lands mid-start wins, and the
start removes what it made), and stopping something already stopped does nothing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from launcher.dispatch import Dispatcher
from launcher.errors import Conflict, LauncherError, NotFound
from launcher.jupyter import wait_ready
from launcher.logs import event
from launcher.models import Session, SessionStatus, StopReason, utcnow
from launcher.policy import ReapPolicy, Verdict, should_reap
from launcher.settings import Settings
from launcher.spec import JUPYTER_SOCKET, LABEL_PREFIX, base_path, build_container_spec, container_name
from launcher.store import SessionStore
from launcher.validation import validate_template_name, validate_user_id
from workers import hostfs
from workers.activity import probe
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
    return hostfs.session_rundir(ctx.settings, session_id) / JUPYTER_SOCKET.rsplit("/", 1)[1]


def _discard(ctx: WorkerContext, session_id: str) -> None:
    ctx.runtime.stop(container_name(ctx.settings, session_id), timeout=0)
    hostfs.remove_rundir(ctx.settings, session_id)


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
        workspace = hostfs.prepare_workspace(ctx.settings, session.user)
        hostfs.copy_template(ctx.settings, session.template, workspace)
        rundir = hostfs.prepare_rundir(ctx.settings, session_id)
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
            _socket_path(ctx, session_id),
            session_id,
            session.token.get_secret_value(),
            timeout=ctx.settings.start_timeout_s,
            still_alive=lambda: ctx.runtime.state(handle.name) == ContainerState.RUNNING,
        )
        now = utcnow()
        session = ctx.store.transition(
            session_id,
            SessionStatus.RUNNING,
            actor=ctx.actor,
            reason="ready",
            url=ctx.settings.public_url.rstrip("/") + base_path(session_id) + "lab",
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
            _discard(ctx, session_id)
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
    _discard(ctx, session_id)
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
        _discard(ctx, session_id)  # idempotent clean-up
        return session
    t0 = time.monotonic()
    if session.status != SessionStatus.STOPPING:
        session = ctx.store.transition(
            session_id, SessionStatus.STOPPING, actor=actor, reason=reason, stop_reason=_stop_reason(reason)
        )
    ctx.runtime.stop(container_name(ctx.settings, session_id), timeout=ctx.settings.stop_timeout_s)
    hostfs.remove_rundir(ctx.settings, session_id)
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
    _discard(ctx, session.id)
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


def heartbeat(ctx: WorkerContext, max_parallel: int = 32, probe_timeout: float = 2.0) -> dict[str, int]:
    """Read every running session's activity on this host in parallel, store it, detect dead containers."""
    sessions = [s for s in ctx.store.list_live(ctx.settings.host_name) if s.status == SessionStatus.RUNNING]
    if not sessions:
        return {"running": 0, "updated": 0, "dead": 0, "unreachable": 0}

    def look(session: Session):
        try:
            return probe(_socket_path(ctx, session.id), session.id, session.token.get_secret_value(), probe_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "did not answer"; the container decides
            return exc

    with ThreadPoolExecutor(max_workers=min(max_parallel, len(sessions))) as pool:
        looks = list(pool.map(look, sessions))
    counts = {"running": len(sessions), "updated": 0, "dead": 0, "unreachable": 0}
    for session, seen in zip(sessions, looks, strict=True):
        if isinstance(seen, Exception):
            state = ctx.runtime.state(container_name(ctx.settings, session.id))
            if state == ContainerState.RUNNING:
                counts["unreachable"] += 1
            elif mark_dead(ctx, session, state) is not None:
                counts["dead"] += 1
            continue
        newer = {"last_activity_at": seen.last_activity} if seen.last_activity else None
        try:
            ctx.store.transition(
                session.id,
                None,
                actor=ctx.actor,
                expected={SessionStatus.RUNNING},
                audit_action="",
                newer=newer,
                kernels_busy=seen.kernels_busy,
                connections=seen.connections,
            )
            counts["updated"] += 1
        except (Conflict, NotFound):
            pass  # stopped meanwhile
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
            url=ctx.settings.public_url.rstrip("/") + base_path(sid) + "lab",
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
            token = ctx.runtime.env(c.name).get("JUPYTER_TOKEN", "")
            rebuilt = _rebuild(ctx, c.labels, c.id, token) if token else None
            if rebuilt is not None:
                try:
                    probe(_socket_path(ctx, rebuilt.id), rebuilt.id, token, timeout=2.0)
                    answers = True
                except Exception:  # noqa: BLE001
                    answers = False
                if answers and ctx.store.adopt(rebuilt, actor=ctx.actor):
                    counts["adopted"] += 1
                    event(log, "session.adopted", session_id=rebuilt.id, user=rebuilt.user, host=host)
                    continue
        ctx.runtime.stop(c.name, timeout=0)
        if c.session_id:
            hostfs.remove_rundir(ctx.settings, c.session_id)
        counts["removed"] += 1
        event(log, "container.orphan_removed", name=c.name, host=host)
    states = {c.session_id: c.state for c in containers}
    for session in ctx.store.list_live(host):
        if session.status == SessionStatus.RUNNING:
            state = states.get(session.id, ContainerState.MISSING)
            if state != ContainerState.RUNNING and mark_dead(ctx, session, state) is not None:
                counts["marked"] += 1
    return counts
