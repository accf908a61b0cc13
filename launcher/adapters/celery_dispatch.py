"""The dispatcher port on Celery: enqueue work for the workers by task name (the console and CLI never
import workers/)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import kombu.exceptions
import redis
from celery import Celery
from celery.exceptions import CeleryError

from launcher.errors import RuntimeUnavailable
from launcher.models import Session
from launcher.settings import Settings

START_TASK = "workers.tasks.start_session"
STOP_TASK = "workers.tasks.stop_session"
DISCARD_TASK = "workers.tasks.discard_session"
REPORT_TASK = "workers.tasks.run_report"


@contextlib.contextmanager
def _broker_errors() -> Iterator[None]:
    try:
        yield
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError, CeleryError, RuntimeError) as exc:
        raise RuntimeUnavailable(
            "the task queue (Redis) is not reachable; try again shortly", f"broker error: {exc!r}"
        ) from None


class CeleryDispatcher:
    """Sends tasks by name: starts and stops to the owning host's queue, stop-all to the control queue."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryDispatcher:
        from celeryconfig import build

        app = Celery("launcher-producer")
        app.conf.update(build(settings))
        return cls(app, settings)

    def _send(self, task: str, session: Session) -> None:
        assert session.host is not None, "a reserved session always has a host"
        with _broker_errors():
            # No result is ever read: without ignore_result Celery first subscribes to the result backend,
            # and with Redis down that retries for about 20 s before failing with a bare RuntimeError.
            queue = self.settings.queue_for_host(session.host)
            self.app.send_task(task, args=[session.id], queue=queue, ignore_result=True)

    def start(self, session: Session) -> None:
        self._send(START_TASK, session)

    def stop(self, session: Session) -> None:
        """Stop the container of a session in ``stopping`` (the record says who asked and why)."""
        self._send(STOP_TASK, session)

    def discard(self, session: Session) -> None:
        """Remove whatever a session that has ended left on its host (container, folders, mounts)."""
        self._send(DISCARD_TASK, session)

    def run_report(self, run_id: str, host: str) -> None:
        """Run a recorded report on its host (``workers.reports``)."""
        with _broker_errors():
            queue = self.settings.queue_for_host(host)
            self.app.send_task(REPORT_TASK, args=[run_id], queue=queue, ignore_result=True)
