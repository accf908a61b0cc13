"""What a host's worker does for one session: start, stop, recover. Tasks call these.

Every step is idempotent: the container's name derives from the session id (a retried start adopts
it), every store write is a compare-and-set on the status (a stop that lands mid-start wins, and the
start removes what it made), and stopping something already stopped does nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from launcher.errors import Conflict, LauncherError, NotFound
from launcher.jupyter import wait_ready
from launcher.logs import event
from launcher.models import Session, SessionStatus, StopReason, utcnow
from launcher.settings import Settings
from launcher.spec import JUPYTER_SOCKET, base_path, build_container_spec, container_name
from launcher.store import SessionStore
from workers import hostfs
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
        # The state moved under us (a stop arrived mid-start): remove whatever this start made.
        _discard(ctx, session_id)
        current = ctx.store.get(session_id)
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
