"""Celery configuration, as a function of the launcher's settings.

``build(settings)`` is used by the worker/beat/Flower app (``workers.app``) and by the producer
that the console and CLI use to enqueue (``launcher.dispatch``).
"""

from __future__ import annotations

from typing import Any

from launcher.settings import Settings


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration; Redis (broker and results) is reached with the password and TLS options."""
    dsn = settings.redis_dsn()
    tls = settings.redis_ssl()
    return {
        "broker_url": dsn,
        "result_backend": dsn,
        "broker_use_ssl": tls,
        "redis_backend_use_ssl": tls,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        "result_backend_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        "result_expires": 24 * 3600,
        # Retry-safe delivery: a task is acknowledged after it ran; a worker lost mid-task gets it redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.control_queue,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "enable_utc": True,
        "timezone": "UTC",
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(settings),
    }


# The per-host sweeps: Beat sends each to the control queue, where ``workers.tasks.fan_out`` sends it on to every
# host registered in Redis and answering (hosts register themselves: no list of hosts to repeat anywhere).
PER_HOST_SWEEPS = ("heartbeat", "reconcile", "measure_workspaces")


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Reap and the deadline sweep run once, on the control queue; the per-host sweeps fan out to every host.

    Each entry expires after one interval: a backlog of stale sweeps is dropped, not replayed.
    """
    schedule: dict[str, dict[str, Any]] = {
        "reap": {
            "task": "workers.tasks.reap",
            "schedule": settings.reap_interval_s,
            "options": {"queue": settings.control_queue, "expires": settings.reap_interval_s},
        },
        "sweep-deadlines": {
            "task": "workers.tasks.sweep_deadlines",
            "schedule": settings.deadline_sweep_interval_s,
            "options": {"queue": settings.control_queue, "expires": settings.deadline_sweep_interval_s},
        },
    }
    for name, interval in (
        ("run_due_reports", settings.report_schedule_tick_s),
        ("sweep_reports", settings.deadline_sweep_interval_s),
        ("check_reproducibility", settings.repro_check_interval_s),
    ):  # report runs (workers/reports.py): the schedules, their deadlines, the reproducibility check
        schedule[name.replace("_", "-")] = {
            "task": f"workers.tasks.{name}",
            "schedule": interval,
            "options": {"queue": settings.control_queue, "expires": interval},
        }
    for name, interval in (
        ("heartbeat", settings.heartbeat_interval_s),
        ("reconcile", settings.reconcile_interval_s),
        ("measure_workspaces", settings.workspace_measure_interval_s),
    ):
        schedule[f"{name}-every-host"] = {
            "task": "workers.tasks.fan_out",
            "schedule": interval,
            "args": [name, interval],
            "options": {"queue": settings.control_queue, "expires": interval},
        }
    return schedule
