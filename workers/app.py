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
def _resume_unfinished(sender=None, **_: object) -> None:
    """A worker that died mid-start or mid-stop left sessions behind: finish them (idempotently)."""
    from workers import lifecycle
    from workers.tasks import context

    ctx = context()
    counts = lifecycle.reconcile(ctx)
    event(log, "worker.reconciled", host=ctx.settings.host_name, **counts)
    starting, stopping = lifecycle.unfinished(ctx)
    dispatcher = CeleryDispatcher(app, ctx.settings)
    for session in filter(None, map(ctx.store.get, starting)):
        dispatcher.start(session)
    for session in filter(None, map(ctx.store.get, stopping)):
        reason = session.stop_reason.value if session.stop_reason else "admin"
        dispatcher.stop(session, session.stop_requested_by or ctx.actor, reason)
    if starting or stopping:
        event(log, "worker.resumed", host=ctx.settings.host_name, starting=len(starting), stopping=len(stopping))
