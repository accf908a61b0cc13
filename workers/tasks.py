"""Celery tasks: thin wrappers that take the worker's context and call ``workers.lifecycle`` or
``workers.sweeps``. Start, stop and discard run on the owning host's queue; reap and the deadline sweep
on the control queue."""

from __future__ import annotations

from functools import cache

from celery import Task, shared_task

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.bootstrap import build_worker_context
from launcher.policy import Deadlines, ReapPolicy
from launcher.settings import Settings
from workers import lifecycle, sweeps


@cache
def context() -> lifecycle.WorkerContext:
    """Built once per worker process, from the worker's environment."""
    return build_worker_context(Settings())


@shared_task(name="workers.tasks.start_session", acks_late=True)
def start_session(session_id: str) -> str | None:
    session = lifecycle.start(context(), session_id)
    return session.status.value if session else None


@shared_task(name="workers.tasks.stop_session", acks_late=True)
def stop_session(session_id: str, *_: str) -> str | None:
    """(Older producers also sent who and why; the record holds both now.)"""
    session = lifecycle.stop(context(), session_id)
    return session.status.value if session else None


@shared_task(name="workers.tasks.discard_session", acks_late=True)
def discard_session(session_id: str) -> None:
    """Remove what an ended session left on this host (the deadline sweep and the fail path ask)."""
    ctx = context()
    session = ctx.store.get(session_id)
    if session is None or not session.status.live:
        lifecycle.discard(ctx, session_id, session.user if session else None)


# Time limits: declared for pools that enforce them (prefork, gevent). The worker runs with
# ``-P threads``, whose pool ignores them (celery.concurrency.thread passes no timeout on), so what
# bounds these tasks is inside them: the heartbeat's probe and sweep deadlines (at most 60 s of
# probes), reconcile's bounded probes, the deadline sweep's single pass. The limits sit above those.
@shared_task(name="workers.tasks.heartbeat", acks_late=True, soft_time_limit=150, time_limit=180)
def heartbeat() -> dict[str, int]:
    return sweeps.heartbeat(context())


@shared_task(name="workers.tasks.reconcile", acks_late=True, soft_time_limit=300, time_limit=330)
def reconcile() -> dict[str, int]:
    return sweeps.reconcile(context())


@shared_task(name="workers.tasks.measure_workspaces", acks_late=True)
def measure_workspaces() -> dict[str, int]:
    return sweeps.measure_workspaces(context())


@shared_task(name="workers.tasks.reap", bind=True, acks_late=True)
def reap(self: Task) -> list[str]:
    ctx = context()
    return sweeps.reap(ctx.store, ReapPolicy.from_settings(ctx.settings), CeleryDispatcher(self.app, ctx.settings))


@shared_task(name="workers.tasks.sweep_deadlines", bind=True, acks_late=True)
def sweep_deadlines(self: Task) -> dict[str, int]:
    ctx = context()
    dispatcher = CeleryDispatcher(self.app, ctx.settings)
    return sweeps.sweep_deadlines(ctx.store, dispatcher, Deadlines.from_settings(ctx.settings))
