"""Read a notebook's activity from its Jupyter REST API, over the socket the entry point uses.

Requests carry ``no_track_activity=1`` so that the probe itself never counts as activity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from launcher.jupyter import api_get
from launcher.models import utcnow


@dataclass(frozen=True)
class Activity:
    last_activity: datetime | None  # newest of kernels and terminals; "now" while a kernel is busy
    kernels: int
    kernels_busy: int
    connections: int
    terminals: int


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def probe(socket_path: Path, session_id: str, token: str, timeout: float = 2.0) -> Activity:
    """One look at the server; raises OSError or ValueError when it does not answer properly."""

    def get(api: str):
        return api_get(socket_path, session_id, token, f"{api}?no_track_activity=1", timeout=timeout)

    status = get("status")
    kernels = get("kernels")
    try:
        terminals = get("terminals")
    except ValueError:  # terminals disabled
        terminals = []
    # Not status["last_activity"]: it counts every API request, and an open JupyterLab tab polls the
    # API every few seconds, so an idle tab would keep the session alive forever (measured: it moves
    # every 10 s with an idle tab open while the kernel's stays put).
    stamps = [_parse(k.get("last_activity")) for k in kernels]
    stamps += [_parse(t.get("last_activity")) for t in terminals]
    busy = sum(1 for k in kernels if k.get("execution_state") == "busy")
    known = [s for s in stamps if s is not None]
    last = utcnow() if busy else (max(known) if known else None)
    return Activity(
        last_activity=last,
        kernels=len(kernels),
        kernels_busy=busy,
        connections=int(status.get("connections", 0)),
        terminals=len(terminals),
    )
