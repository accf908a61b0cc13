"""Celery tasks: thin wrappers that take the worker's context and call ``workers.lifecycle`` or
``workers.sweeps``. Start, stop and discard run on the owning host's queue; reap and the deadline sweep
on the control queue."""

from __future__ import annotations

import logging
from functools import cache

from celery import Task, shared_task

from celeryconfig import PER_HOST_SWEEPS
from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.redis_reports import ReportStore
from launcher.bootstrap import build_worker_context
from launcher.errors import LauncherError
from launcher.flows import admit_waiting
from launcher.logs import event
from launcher.models import HostState, Session
from launcher.policy import Deadlines, ReapPolicy
from launcher.report_service import ReportService
from launcher.settings import Settings
from workers import lifecycle, reports, sweeps

log = logging.getLogger("launcher.worker")


@cache
def context() -> lifecycle.WorkerContext:
    """Built once per worker process, from the worker's environment."""
    return build_worker_context(Settings())


@cache
def report_store() -> ReportStore:
    ctx = context()
    return ReportStore(ctx.store, ctx.settings.report_keep_per_user)


def _report_service(task: Task) -> ReportService:
    ctx = context()
    return ReportService(ctx.settings, report_store(), ctx.store, CeleryDispatcher(task.app, ctx.settings))


def _admit(task: Task, session: Session | None) -> None:
    """Room freed on this host (a session ended): admit waiting launches now, not at the next sweep."""
    if session is None or session.status.live:
        return
    ctx = context()
    try:
        admit_waiting(ctx.store, CeleryDispatcher(task.app, ctx.settings), actor=str(ctx.by))
    except LauncherError as exc:  # the deadline sweep admits later
        event(log, "queue.admit_failed", level=logging.WARNING, error=exc.log_message)


@shared_task(name="workers.tasks.start_session", bind=True, acks_late=True)
def start_session(self: Task, session_id: str) -> str | None:
    session = lifecycle.start(context(), session_id)
    _admit(self, session)  # a start that failed gave its room back
    return session.status.value if session else None


@shared_task(name="workers.tasks.stop_session", bind=True, acks_late=True)
def stop_session(self: Task, session_id: str, *_: str) -> str | None:
    """(Older producers also sent who and why; the record holds both now.)"""
    session = lifecycle.stop(context(), session_id)
    _admit(self, session)
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
    counts = sweeps.reconcile(context())
    counts["reports_removed"] = reports.reconcile(context(), report_store())
    return counts


@shared_task(name="workers.tasks.measure_workspaces", acks_late=True)
def measure_workspaces() -> dict[str, int]:
    return sweeps.measure_workspaces(context())


@shared_task(name="workers.tasks.fan_out", bind=True, acks_late=True)
def fan_out(self: Task, name: str, interval: float) -> list[str]:
    """Send a per-host sweep to every registered host that answers (Beat sends this on its schedule). A host that
    is down gets none: its queue does not fill with sweeps it would run late; it is reconciled when it returns."""
    if name not in PER_HOST_SWEEPS:
        raise ValueError(f"unknown per-host sweep {name!r}")
    ctx = context()
    sent = []
    for host in ctx.store.hosts():
        if host.state == HostState.DOWN:
            continue
        queue = ctx.settings.queue_for_host(host.name)
        self.app.send_task(f"workers.tasks.{name}", queue=queue, expires=interval, ignore_result=True)
        sent.append(host.name)
    return sent


@shared_task(name="workers.tasks.reap", bind=True, acks_late=True)
def reap(self: Task) -> list[str]:
    ctx = context()
    return sweeps.reap(ctx.store, ReapPolicy.from_settings(ctx.settings), CeleryDispatcher(self.app, ctx.settings))


@shared_task(name="workers.tasks.sweep_deadlines", bind=True, acks_late=True)
def sweep_deadlines(self: Task) -> dict[str, int]:
    ctx = context()
    dispatcher = CeleryDispatcher(self.app, ctx.settings)
    return sweeps.sweep_deadlines(ctx.store, dispatcher, Deadlines.from_settings(ctx.settings))


# -- report runs ----------------------------------------------------------------------------------------
REPORT_RETRY_S = 10


@shared_task(name="workers.tasks.run_report", bind=True, acks_late=True, max_retries=None)
def run_report(self: Task, run_id: str) -> str | None:
    """Run a report on this host (up to ``report_timeout_s``; bounded inside ``workers.reports``). With
    ``report_concurrency`` runs going here already it comes back in ``REPORT_RETRY_S`` (the deadline sweep
    fails a run that waits longer than ``report_queue_deadline_s``)."""
    try:
        run = reports.run(context(), report_store(), run_id)
    except reports.NoRoom:
        raise self.retry(countdown=REPORT_RETRY_S) from None
    return run.status.value if run else None


@shared_task(name="workers.tasks.run_due_reports", bind=True, acks_late=True)
def run_due_reports(self: Task) -> list[str]:
    return [run.id for run in _report_service(self).run_due()]


@shared_task(name="workers.tasks.sweep_reports", bind=True, acks_late=True)
def sweep_reports(self: Task) -> dict[str, int]:
    return _report_service(self).sweep()


@shared_task(name="workers.tasks.check_reproducibility", bind=True, acks_late=True)
def check_reproducibility(self: Task) -> list[str]:
    return [run.id for run in _report_service(self).check_sample()]
