"""The Celery app for worker, beat and Flower processes: ``celery -A workers.app ...``.

This is a process entry point, so it reads the settings from the environment here; everything
below it receives them as arguments.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from celery.worker.consumer.consumer import Consumer as CeleryConsumer

from celeryconfig import build
from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.errors import LauncherError
from launcher.logs import event
from launcher.settings import Settings

log = logging.getLogger("launcher.worker")


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery has no type hints
    """Celery's consumer, surviving a broker (Redis) restart while tasks are in flight.

    With Celery and kombu 5.7, the Redis transport and ``acks_late`` tasks running, a lost broker connection
    ends the worker ("Unrecoverable error: AttributeError: 'NoneType' object has no attribute 'hostname'"):
    closing the collected connection, and later acknowledging a task received on it, both reach a transport
    whose client is gone. Both are what they look like, a lost connection: the consumer reconnects, and a task
    whose acknowledgement was lost is delivered again after the visibility timeout (every task is idempotent;
    a worker's start resumes unfinished work anyway). Found by tests/test_faults.py (Redis restarted mid-start).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        known: tuple[type[BaseException], ...] = tuple(self.connection_errors)  # type: ignore[has-type]
        self.connection_errors = (*known, AttributeError)  # "Couldn't ack", logged, not fatal

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as err:  # closing the broken connection: it is gone either way
            event(log, "worker.broker_close_failed", level=logging.WARNING, error=repr(err)[:200])


def create_app(settings: Settings) -> Celery:
    app = Celery("launcher")
    app.conf.update(build(settings))
    app.conf.worker_consumer = f"{__name__}:Consumer"
    app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
    return app


app = create_app(Settings())


_BEACON: list[Any] = []


@worker_ready.connect
def _announce(sender: object = None, **_: object) -> None:
    """Register this host in Redis and keep announcing it (workers.registry); when it is new or back after being
    down, reconcile it and let the queue use its room."""
    from launcher.flows import admit_waiting
    from workers import pool
    from workers.registry import Beacon
    from workers.tasks import context

    ctx = context()

    def on_return() -> None:
        app.send_task("workers.tasks.reconcile", queue=ctx.settings.host_queue, ignore_result=True)
        admit_waiting(ctx.store, CeleryDispatcher(app, ctx.settings), actor=str(ctx.by))

    beacon = Beacon(ctx, on_return)
    beacon.start()
    _BEACON.append(beacon)
    try:  # the warm pool (workers/pool.py): kept while configured, or while one from before a restart remains
        keep_pool = bool(pool.wanted(ctx.settings) or ctx.store.pool_slots(ctx.settings.host_name))
    except LauncherError:
        keep_pool = bool(pool.wanted(ctx.settings))
    if keep_pool:

        def on_room() -> None:
            beacon.beat()  # announce the room the pool gave back, then let the queue use it
            admit_waiting(ctx.store, CeleryDispatcher(app, ctx.settings), actor=str(ctx.by))

        keeper = pool.Keeper(ctx, on_room)
        keeper.start()
        _BEACON.append(keeper)


@worker_shutdown.connect
def _retire(sender: object = None, **_: object) -> None:
    """A worker that stops says so: its host is down at once (launches go elsewhere), not after the timeout."""
    from workers.tasks import context

    for beacon in _BEACON:
        beacon.stop()
    try:
        context().store.mark_host_gone(context().settings.host_name)
    except LauncherError as exc:
        event(log, "host.retire_failed", level=logging.WARNING, error=exc.log_message)


@worker_ready.connect
def _resume_unfinished(sender: object = None, **_: object) -> None:
    """A worker that died mid-start or mid-stop left sessions behind: finish them (idempotently)."""
    from workers import labstatic, pyprefix, reports, sweeps
    from workers.tasks import context, report_store

    ctx = context()
    labstatic.ensure(ctx.settings, ctx.runtime, ctx.settings.notebook_image)  # and its brotli, in the background
    pyprefix.ready(ctx.settings, ctx.runtime, ctx.settings.notebook_image)  # the copy starts in the background
    try:
        counts = sweeps.reconcile(ctx)
        counts["reports_removed"] = reports.reconcile(ctx, report_store())
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
