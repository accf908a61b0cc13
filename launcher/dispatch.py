"""Enqueueing work for the workers, by task name (the console and CLI never import workers/)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import kombu.exceptions
import redis
from celery import Celery

from launcher.errors import RuntimeUnavailable
from launcher.models import Session
from launcher.settings import Settings

START_TASK = "workers.tasks.start_session"
STOP_TASK = "workers.tasks.stop_session"
STOP_ALL_TASK = "workers.tasks.stop_all"


class Dispatcher(Protocol):
    def start(self, session: Session) -> None: ...
    def stop(self, session: Session, actor: str, reason: str) -> None: ...
    def stop_all(self, actor: str) -> str: ...
    def progress(self, task_id: str) -> dict[str, object]: ...


@contextlib.contextmanager
def _broker_errors() -> Iterator[None]:
    try:
        yield
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
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

    def start(self, session: Session) -> None:
        assert session.host is not None, "a reserved session always has a host"
        with _broker_errors():
            self.app.send_task(START_TASK, args=[session.id], queue=self.settings.queue_for_host(session.host))

    def stop(self, session: Session, actor: str, reason: str) -> None:
        assert session.host is not None
        with _broker_errors():
            self.app.send_task(
                STOP_TASK, args=[session.id, actor, reason], queue=self.settings.queue_for_host(session.host)
            )

    def stop_all(self, actor: str) -> str:
        with _broker_errors():
            return self.app.send_task(STOP_ALL_TASK, args=[actor], queue=self.settings.control_queue).id

    def progress(self, task_id: str) -> dict[str, object]:
        with _broker_errors():
            result = self.app.AsyncResult(task_id)
            state, info = result.state, result.info
        done = total = 0
        if isinstance(info, dict):
            done, total = int(info.get("done", 0)), int(info.get("total", 0))
        return {"state": state, "done": done, "total": total}
