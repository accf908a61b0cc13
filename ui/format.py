"""Pure helpers that turn sessions and events into what the pages show (no Streamlit here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from launcher.models import AuditEvent, Session


def ago(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def clock(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "-"


def session_rows(sessions: list[Session], now: datetime) -> list[dict[str, Any]]:
    """The admin table: no token, no URL with a token."""
    rows = []
    for s in sessions:
        last = s.last_activity_at or s.started_at
        rows.append(
            {
                "session": s.id,
                "user": s.user,
                "template": s.template,
                "host": s.host or "-",
                "status": s.status.value,
                "started": clock(s.started_at),
                "last activity": clock(s.last_activity_at),
                "idle for": ago(now - last) if last else "-",
                "busy kernels": s.kernels_busy,
            }
        )
    return rows


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


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    title: str
    description: str
    data: str


@cache
def _template_info(path: Path, mtime: float) -> TemplateInfo:
    meta = json.loads(path.read_text()).get("metadata", {}).get("launcher", {})
    return TemplateInfo(
        name=path.stem,
        title=meta.get("title", path.stem.replace("_", " ").title()),
        description=meta.get("description", ""),
        data=meta.get("data", ""),
    )


def template_info(templates_dir: Path, name: str) -> TemplateInfo:
    path = templates_dir / f"{name}.ipynb"
    return _template_info(path, path.stat().st_mtime)
