"""The composition root: each process (console, CLI, worker, Beat, entry point) builds its settings and
adapters here, once, and hands them to the code that needs them. Nothing else constructs adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.redis_reports import ReportStore
from launcher.adapters.redis_store import SessionStore
from launcher.report_service import ReportService
from launcher.service import LauncherService
from launcher.settings import Settings

if TYPE_CHECKING:
    from workers.lifecycle import WorkerContext


def build_store(settings: Settings) -> SessionStore:
    return SessionStore.from_settings(settings)


def build_service(settings: Settings) -> LauncherService:
    """The service the console and the CLI call: the Redis store and the Celery dispatcher."""
    return LauncherService(settings, build_store(settings), CeleryDispatcher.from_settings(settings))


def build_report_service(settings: Settings, store: SessionStore | None = None) -> ReportService:
    """Report runs for the console, the CLI and Beat: the Redis stores and the Celery dispatcher."""
    sessions = store or build_store(settings)
    reports = ReportStore(sessions, settings.report_keep_per_user)
    return ReportService(settings, reports, sessions, CeleryDispatcher.from_settings(settings))


def build_worker_context(settings: Settings) -> WorkerContext:
    """What a host's worker acts with: the store and this host's Docker engine (connected on first use)."""
    from launcher.adapters.docker_runtime import DockerRuntime
    from workers.lifecycle import WorkerContext

    return WorkerContext(settings, build_store(settings), DockerRuntime())
