"""What a host's worker does for one session: start, stop, discard. Tasks call these.

Every step is idempotent: the container's name derives from the session id (a retried start adopts
it), every store write is a command of the state machine applied as a compare-and-set (a stop that
lands mid-start wins, and the start removes what it made), and stopping something already stopped
does nothing. Failure paths write the end state first and clean up after, so an outage in between
(the Docker engine gone, say) leaves a session ended with a reason, never stuck; whatever the clean-up
could not remove, reconcile removes later. Container operations are retried with backoff while the
engine is unreachable, up to the state's deadline.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from launcher import snapshots
from launcher.adapters.jupyter_http import wait_ready
from launcher.adapters.redis_store import SessionStore
from launcher.errors import Conflict, LauncherError, NotFound, RuntimeUnavailable
from launcher.flows import fail
from launcher.logs import event
from launcher.models import Reason, Session, SessionStatus, utcnow
from launcher.ports import ContainerState, Handle, Runtime
from launcher.settings import Settings
from launcher.spec import build_container_spec, container_name
from launcher.transitions import (
    ActorKind,
    By,
    ClaimPool,
    MarkRunning,
    MarkStarting,
    MarkStopped,
    RecordProvenance,
    SetPhase,
)
from workers import hostfs, labstatic, provenance, pyprefix, quota

log = logging.getLogger("launcher.worker")
T = TypeVar("T")
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0


@dataclass
class WorkerContext:
    settings: Settings
    store: SessionStore
    runtime: Runtime

    @property
    def by(self) -> By:
        return By(ActorKind.WORKER, self.settings.host_name)


def retrying(action: Callable[[], T], until: float, what: str) -> T:
    """Run ``action``, retrying with backoff while the engine or the session store is unreachable (both raise
    ``RuntimeUnavailable``), until ``until`` (monotonic)."""
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return action()
        except RuntimeUnavailable as exc:
            if time.monotonic() + delay > until:
                raise
            event(log, "runtime.retry", level=logging.WARNING, what=what, in_s=delay, error=exc.log_message)
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


def _until(session: Session, deadline_s: float) -> float:
    """The monotonic time at which a session's current status reaches its deadline."""
    left = (session.status_since + timedelta(seconds=deadline_s) - utcnow()).total_seconds()
    return time.monotonic() + max(0.0, left)


def discard(ctx: WorkerContext, session_id: str, user: str | None) -> None:
    """Remove what a session left on this host: container, session folder, workspace mount.

    The folder and the mount go even when the engine is unreachable (the error is raised after): a start that
    failed before its container existed leaves nothing for reconcile to find, and so nothing to clean up later.
    """
    slot = _pool_slot(ctx, session_id)
    try:
        ctx.runtime.stop(container_name(ctx.settings, session_id), timeout=0)
        if slot:  # a claimed warm-pool container: its workspace mount goes once the container is gone
            from workers import pool

            pool.release(ctx, slot)
    finally:
        hostfs.remove_rundir(ctx.settings, session_id)
        if user:
            with quota.user_lock(user):
                if not _workspace_in_use(ctx, user, session_id):
                    quota.detach(ctx.settings, user)


def _pool_slot(ctx: WorkerContext, session_id: str) -> str | None:
    """The warm-pool slot a session claimed (None for a cold start, or when Redis cannot say: reconcile then
    unmounts the slot once its container is gone)."""
    try:
        session = ctx.store.get(session_id)
    except LauncherError:
        return None
    return session.pool_slot if session is not None else None


def _workspace_in_use(ctx: WorkerContext, user: str, session_id: str) -> bool:
    """Whether another live session of the user runs on this host (it shares the workspace mount). When Redis
    cannot say, the mount stays: reconcile releases the workspaces of users with nothing live here."""
    try:
        others = ctx.store.live_sessions_for(user)
    except LauncherError:
        return True
    return any(s.id != session_id and s.host == ctx.settings.host_name for s in others)


def clean_up(ctx: WorkerContext, session_id: str, user: str | None) -> None:
    """``discard``, never raising: what is left (the engine unreachable) reconcile removes later."""
    try:
        discard(ctx, session_id, user)
    except Exception as exc:  # noqa: BLE001 - the end state is written already
        event(log, "session.cleanup_deferred", level=logging.WARNING, session_id=session_id, error=repr(exc)[:300])


_IN_FLIGHT: set[tuple[str, str]] = set()
_IN_FLIGHT_LOCK = threading.Lock()


@contextlib.contextmanager
def _once(what: str, session_id: str) -> Iterator[bool]:
    """True for the first start (or stop) of a session running in this worker process, False for a copy
    that arrives meanwhile (a resend by the deadline sweep during an outage): the copy returns at once
    instead of holding a worker thread in the same retry loop."""
    key = (what, session_id)
    with _IN_FLIGHT_LOCK:
        first = key not in _IN_FLIGHT
        _IN_FLIGHT.add(key)
    try:
        yield first
    finally:
        if first:
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT.discard(key)


def _once_per_worker(
    what: str, ctx: WorkerContext, session_id: str, action: Callable[[WorkerContext, str], Session | None]
) -> Session | None:
    with _once(what, session_id) as first:
        if not first:
            event(log, f"session.{what}_skipped", session_id=session_id, why="already in progress in this worker")
            return ctx.store.get(session_id)
        return action(ctx, session_id)


def start(ctx: WorkerContext, session_id: str) -> Session | None:
    """Bring the session's container up and mark it running, or end in ``error`` leaving nothing behind."""
    return _once_per_worker("start", ctx, session_id, _start)


def _start(ctx: WorkerContext, session_id: str) -> Session | None:
    session = ctx.store.get(session_id)
    if session is None:
        event(log, "session.start_skipped", session_id=session_id, why="unknown session")
        return None
    if session.status not in (SessionStatus.QUEUED, SessionStatus.STARTING):
        # Duplicate delivery after success, or a stop that came first: nothing to start.
        event(log, "session.start_skipped", session_id=session_id, status=session.status.value)
        return session
    if session.host != ctx.settings.host_name:  # placed elsewhere since (its host went down and it was requeued)
        event(log, "session.start_skipped", session_id=session_id, why=f"placed on {session.host}")
        return session
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    fields: dict[str, Any] = {"session_id": session_id, "user": session.user, "host": ctx.settings.host_name}
    try:
        session = ctx.store.apply(session_id, MarkStarting(by=ctx.by, reason=Reason.START))
        until = _until(session, ctx.settings.starting_deadline_s)
        hostfs.check_notebook_identity(ctx.settings)
        # The data snapshot it pinned, or the current one (pinned on the session by the record below).
        snapshot, data = snapshots.resolve(ctx.settings.data_dir, session.snapshot)
        fields["snapshot"] = snapshot
        with quota.user_lock(session.user):  # attached here, held by the container below (never released between)
            workspace = hostfs.prepare_workspace(ctx.settings, session.user)
            if quota.filesystem_mode(ctx.settings):
                quota.attach(ctx.settings, session.user, workspace)
            ctx.store.set_usage(session.user, quota.measure(ctx.settings, workspace))
            if session.template_sha256:  # "relaunch exactly": that version, beside the user's own copy
                hostfs.copy_pinned_template(ctx.settings, session.template, session.template_sha256, workspace)
            else:
                hostfs.copy_template(ctx.settings, session.template, workspace)
                kept = provenance.template_sha(ctx.settings, session.template)
                hostfs.keep_template(ctx.settings, session.template, kept)
            claimed = _claim_from_pool(ctx, session, workspace, snapshot, until)
            if claimed is not None:  # a warm pool container is now this session's: its Jupyter answers already
                session, handle = claimed
                timings["claim"] = time.monotonic() - t0
            else:
                rundir = hostfs.prepare_rundir(ctx.settings, session_id, session.token.get_secret_value())
                image = session.image or ctx.settings.notebook_image
                spec = build_container_spec(
                    session,
                    ctx.settings,
                    workspace=workspace,
                    rundir=rundir,
                    data=data,
                    static_url=labstatic.ensure(ctx.settings, ctx.runtime, image),
                    python_prefix=pyprefix.ready(ctx.settings, ctx.runtime, image),
                )
                timings["prepare"] = time.monotonic() - t0
                handle = retrying(lambda: ctx.runtime.start(spec), until, "start")
                timings["container"] = time.monotonic() - t0 - timings["prepare"]
            phase = SetPhase(by=ctx.by, reason=Reason.START, phase="waiting for Jupyter", container_id=handle.id)
            retrying(lambda: ctx.store.apply(session_id, phase), until, "record the phase")  # Redis may be restarting
        if claimed is None:
            timings["jupyter"] = wait_ready(
                hostfs.socket_path(ctx.settings, session_id),
                session.token.get_secret_value(),
                timeout=min(ctx.settings.start_timeout_s, max(1.0, until - time.monotonic())),
                still_alive=lambda: _still_running(ctx, handle.name),
            )
            hostfs.lock_socket(ctx.settings, session_id)
            hostfs.retire_secret(ctx.settings, session_id)
        # The record: on the session and in the audit (one command), then in the workspace (best effort).
        started: Session = session
        record = retrying(
            lambda: provenance.record_for(ctx.settings, ctx.runtime, started, snapshot=snapshot, container=handle.name),
            until,
            "inspect the image",
        )
        pin = RecordProvenance(by=ctx.by, reason=Reason.START, snapshot=snapshot, record=tuple(record.items()))
        retrying(lambda: ctx.store.apply(session_id, pin), until, "record provenance")
        try:
            hostfs.write_record(ctx.settings, workspace, session_id, provenance.record_json(record))
        except (OSError, LauncherError) as exc:  # e.g. the user made ~/work/.launcher a symlink: not followed
            event(log, "session.record_not_written", level=logging.WARNING, **fields, error=str(exc)[:200])
        ready = MarkRunning(by=ctx.by, reason=Reason.READY, url=ctx.settings.session_origin(session_id))
        session = retrying(lambda: ctx.store.apply(session_id, ready), until, "record running")
    except Conflict:
        # The state moved under us. A stop that arrived mid-start wins: remove what this start made.
        # But if another delivery of this same start finished first (running), its container is ours
        # too (same name): leave it alone.
        current = ctx.store.get(session_id)
        if current is None or current.status not in (SessionStatus.RUNNING, SessionStatus.STARTING):
            clean_up(ctx, session_id, fields["user"])
        elif current.status == SessionStatus.RUNNING:  # this delivery may have rewritten the secret file
            hostfs.retire_secret(ctx.settings, session_id)
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
        **{f"{k}_s": round(v, 3) for k, v in timings.items()},  # type: ignore[arg-type]
    )
    return session


def _claim_from_pool(
    ctx: WorkerContext, session: Session, workspace: Path, snapshot: str, until: float
) -> tuple[Session, Handle] | None:
    """Claim a warm-pool container of this host for the session (workers.pool), or None to start cold."""
    from workers import pool

    if not pool.wanted(ctx.settings):
        return None
    claimed = pool.claim(ctx, session, workspace, snapshot)
    if claimed is None:
        return None
    slot, secret, container_id = claimed
    command = ClaimPool(by=ctx.by, reason=Reason.START, slot=slot, token=secret, container_id=container_id)
    recorded = retrying(lambda: ctx.store.apply(session.id, command), until, "record the claim")
    return recorded, Handle(id=container_id, name=container_name(ctx.settings, session.id))


def _still_running(ctx: WorkerContext, name: str) -> bool:
    """Whether a starting container still runs. While the engine is unreachable the answer is unknown and counts
    as yes: the readiness wait goes on (bounded by the starting deadline) instead of failing on a Docker blip."""
    try:
        return ctx.runtime.state(name) == ContainerState.RUNNING
    except RuntimeUnavailable as exc:
        event(log, "runtime.unknown", level=logging.WARNING, what="still running", name=name, error=exc.log_message)
        return True


def _fail_start(
    ctx: WorkerContext, session_id: str, user_message: str, log_message: str, fields: dict[str, Any]
) -> Session | None:
    """The end state first (error, with a reason the user can read), then the clean-up."""
    event(log, "session.start_failed", level=logging.WARNING, **fields, error=log_message)
    start_log = _start_log(ctx, session_id)  # before the clean-up removes the container
    ended = fail(ctx.store, None, session_id, ctx.by, Reason.START_FAILED, user_message, starting_only=True)
    if ended is not None and ended.status == SessionStatus.ERROR and start_log:
        ended = _keep_start_log(ctx, session_id, start_log) or ended
    if ended is None or ended.status != SessionStatus.RUNNING:  # never remove what a winning delivery runs
        clean_up(ctx, session_id, fields.get("user"))
    return ended


START_LOG_LINES = 40


def _start_log(ctx: WorkerContext, session_id: str) -> str:
    """The last lines of a failing start's container output, secrets scrubbed ("" when there is none)."""
    from launcher.views import scrub

    try:
        text = ctx.runtime.logs(container_name(ctx.settings, session_id), tail=START_LOG_LINES)
        session = ctx.store.get(session_id)
    except Exception as exc:  # noqa: BLE001 - the log is a courtesy; the failure must still be recorded
        event(log, "session.start_log_unavailable", level=logging.WARNING, session_id=session_id, error=repr(exc)[:200])
        return ""
    secrets = [session.token.get_secret_value()] if session is not None else []
    return scrub(text, secrets)


def _keep_start_log(ctx: WorkerContext, session_id: str, text: str) -> Session | None:
    """Store the scrubbed start log on the ended session (best effort)."""
    from launcher.transitions import RecordStartLog

    try:
        return ctx.store.apply(session_id, RecordStartLog(by=ctx.by, reason=Reason.START_FAILED, text=text))
    except (LauncherError, Conflict) as exc:
        event(log, "session.start_log_not_kept", level=logging.WARNING, session_id=session_id, error=str(exc)[:200])
        return None


def stop(ctx: WorkerContext, session_id: str) -> Session | None:
    """Stop and remove the container of a session in ``stopping``, then mark it stopped. Safe to repeat."""
    return _once_per_worker("stop", ctx, session_id, _stop)


def _stop(ctx: WorkerContext, session_id: str) -> Session | None:
    """The stop itself.

    The stop was requested through ``launcher.flows.request_stop`` (the record says who and why). While
    the engine is unreachable the removal is retried until the stopping deadline; past it the session
    is marked stopped anyway (noted in the audit) and reconcile removes the container when it can.
    """
    session = ctx.store.get(session_id)
    if session is None:
        return None
    if session.status in (SessionStatus.STOPPED, SessionStatus.ERROR):
        clean_up(ctx, session_id, session.user)  # idempotent clean-up
        return session
    if session.status != SessionStatus.STOPPING:
        event(log, "session.stop_skipped", session_id=session_id, status=session.status.value)
        return session
    t0 = time.monotonic()
    until = _until(session, ctx.settings.stopping_deadline_s)
    note = ""
    try:
        name = container_name(ctx.settings, session_id)
        retrying(lambda: ctx.runtime.stop(name, timeout=ctx.settings.stop_timeout_s), until, "stop")
    except RuntimeUnavailable as exc:
        note = "the container could not be removed yet (Docker unreachable); it is removed when Docker returns"
        event(log, "session.stop_deferred", level=logging.WARNING, session_id=session_id, error=exc.log_message)
    removed_s = time.monotonic() - t0
    clean_up(ctx, session_id, session.user)
    cleaned_s = time.monotonic() - t0 - removed_s
    reason = session.stop_reason or Reason.ADMIN
    try:
        session = ctx.store.apply(session_id, MarkStopped(by=ctx.by, reason=reason, note=note))
    except (Conflict, NotFound):
        session = ctx.store.get(session_id) or session
    event(
        log,
        "session.stopped",
        session_id=session_id,
        user=session.user,
        host=ctx.settings.host_name,
        by=session.stop_requested_by or "",
        reason=reason.value,
        stop_s=round(time.monotonic() - t0, 3),
        container_s=round(removed_s, 3),
        cleanup_s=round(cleaned_s, 3),
    )
    return session
