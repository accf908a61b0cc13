"""The Celery app for worker, beat and Flower processes: ``celery -A workers.app ...``.

This is a process entry point, so it reads the settings from the environment here; everything
below it receives them as arguments.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_ready

from celeryconfig import build
from launcher.dispatch import CeleryDispatcher
from launcher.errors import LauncherError
from launcher.logs import event
from launcher.settings import Settings

log = logging.getLogger("launcher.worker")


def create_app(settings: Settings) -> Celery:
    app = Celery("launcher")
    app.conf.update(build(settings))
    app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
    return app


app = create_app(Settings())


@worker_ready.connect
def _resume_unfinished(sender: object = None, **_: object) -> None:
    """A worker that died mid-start or mid-stop left sessions behind: finish them (idempotently)."""
    from workers import sweeps
    from workers.tasks import context

    ctx = context()
    try:
        counts = sweeps.reconcile(ctx)
    except LauncherError as exc:  # Docker down at worker start: Beat's reconcile tries again later
        event(log, "worker.reconcile_failed", level=logging.WARNING, error=exc.log_message)
        counts = {}
    event(log, "worker.reconciled", host=ctx.settings.host_name, **counts)
    starting, stopping = sweeps.unfinished(ctx)
    dispatcher = CeleryDispatcher(app, ctx.settings)
    for session in filter(None, map(ctx.store.get, starting)):
        dispatcher.start(session)
    for session in filter(None, map(ctx.store.get, stopping)):
        dispatcher.stop(session)
    if starting or stopping:
        event(log, "worker.resumed", host=ctx.settings.host_name, starting=len(starting), stopping=len(stopping))
