"""Celery tasks: thin wrappers that gather the context and call ``workers.lifecycle``."""

from __future__ import annotations

import logging
import time
from functools import cache

from celery import Task, shared_task

from launcher.dispatch import CeleryDispatcher
from launcher.errors import LauncherError
from launcher.logs import event
from launcher.models import SessionStatus, StopReason
from launcher.policy import ReapPolicy
from launcher.settings import Settings
from launcher.store import SessionStore
from workers import lifecycle
from workers.runtime import DockerRuntime

log = logging.getLogger("launcher.worker")


@cache
def context() -> lifecycle.WorkerContext:
    """Built once per worker process, from the worker's environment."""
    settings = Settings()
    return lifecycle.WorkerContext(settings, SessionStore.from_settings(settings), DockerRuntime())


@shared_task(name="workers.tasks.start_session", acks_late=True)
def start_session(session_id: str) -> str | None:
    session = lifecycle.start(context(), session_id)
    return session.status.value if session else None


@shared_task(name="workers.tasks.stop_session", acks_late=True)
def stop_session(session_id: str, actor: str, reason: str) -> str | None:
    session = lifecycle.stop(context(), session_id, actor, reason)
    return session.status.value if session else None


# Time limits: declared for pools that enforce them (prefork, gevent). The worker runs with
# ``-P threads``, whose pool ignores them (celery.concurrency.thread passes no timeout on), so what
# bounds these tasks is inside them: the heartbeat's probe and sweep deadlines (at most 60 s of
# probes), reconcile's bounded probes, stop_all's own deadline. The limits sit above those.
@shared_task(name="workers.tasks.heartbeat", acks_late=True, soft_time_limit=150, time_limit=180)
def heartbeat() -> dict[str, int]:
    return lifecycle.heartbeat(context())


@shared_task(name="workers.tasks.reconcile", acks_late=True, soft_time_limit=300, time_limit=330)
def reconcile() -> dict[str, int]:
    return lifecycle.reconcile(context())


@shared_task(name="workers.tasks.measure_workspaces", acks_late=True)
def measure_workspaces() -> dict[str, int]:
    return lifecycle.measure_workspaces(context())


@shared_task(name="workers.tasks.reap", bind=True, acks_late=True)
def reap(self: Task) -> list[str]:
    ctx = context()
    return lifecycle.reap(ctx.store, ReapPolicy.from_settings(ctx.settings), CeleryDispatcher(self.app, ctx.settings))


@shared_task(name="workers.tasks.stop_all", bind=True, acks_late=True, soft_time_limit=900, time_limit=930)
def stop_all(self: Task, actor: str) -> dict[str, int]:
    """Ask every live session's host to stop it; report progress until all have stopped."""
    ctx = context()
    dispatcher = CeleryDispatcher(self.app, ctx.settings)
    targets = []
    for session in ctx.store.list_live():
        try:
            session = ctx.store.transition(
                session.id,
                SessionStatus.STOPPING,
                actor=actor,
                reason="admin",
                stop_requested_by=actor,
                stop_reason=StopReason.ADMIN,
            )
        except LauncherError as exc:  # already gone or moved on: nothing to ask
            event(log, "sessions.stop_all_skipped", session_id=session.id, why=exc.log_message)
            continue
        dispatcher.stop(session, actor, "admin")
        targets.append(session.id)
    total = len(targets)
    event(log, "sessions.stop_all", actor=actor, total=total)
    deadline = time.monotonic() + ctx.settings.stop_timeout_s + 120
    while True:
        pending = [sid for sid in targets if (s := ctx.store.get(sid)) is not None and s.status.live]
        done = total - len(pending)
        self.update_state(state="PROGRESS", meta={"done": done, "total": total})
        if not pending or time.monotonic() > deadline:
            return {"done": done, "total": total}
        time.sleep(0.25)
