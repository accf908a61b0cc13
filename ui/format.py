"""Pure helpers that turn sessions and events into what the pages show (no Streamlit here)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from launcher.models import AuditEvent
from launcher.views import SessionView


def ago(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def plural(count: int, noun: str) -> str:
    """``1 session``, ``2 sessions``, ``0 sessions``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def clock(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "-"


def session_rows(sessions: list[SessionView]) -> list[dict[str, Any]]:
    """The admin table (the views carry no secret)."""
    return [
        {
            "session": s.id,
            "user": s.user,
            "template": s.template.title,
            "host": s.host or "-",
            "status": s.status.value,
            "started": clock(s.started_at),
            "last activity": clock(s.last_activity_at),
            "stops in": ago(s.time_left),
            "busy kernels": s.kernels_busy,
            "max age": "exempt" if s.max_age_exempt else "",
        }
        for s in sessions
    ]


def audit_rows(events: list[AuditEvent]) -> list[dict[str, Any]]:
    return [
        {
            "time": e.time.strftime("%Y-%m-%d %H:%M:%S"),
            "user": e.user,
            "session": e.session_id,
            "template": e.template,
            "from": e.previous or "-",
            "to": e.action,
            "by": e.actor,
            "why": e.reason,
            "detail": e.detail,
        }
        for e in events
    ]
