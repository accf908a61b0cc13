"""Read a notebook's activity from its Jupyter REST API, over the socket the entry point uses.

Requests carry ``no_track_activity=1`` so that the probe itself never counts as activity. The
server is not trusted: the three calls of one probe share one deadline (``launcher.adapters.jupyter_http``
bounds each call's time and size), every answer's shape is checked, and timestamps later than now
are taken as now (a server reporting the future must not make its session unreapable).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from launcher.adapters.jupyter_http import PROBE_DEADLINE_S, BadAnswer, NoAnswer, api_get
from launcher.models import utcnow

MAX_COUNT = 1_000_000  # a larger "connections" is not an answer Jupyter gives
_MAX_STAMP_CHARS = 64


@dataclass(frozen=True)
class Activity:
    last_activity: datetime | None  # newest of kernels and terminals, never later than now; now while a kernel is busy
    kernels: int
    kernels_busy: int
    connections: int
    terminals: int


def _objects(value: Any, api: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise BadAnswer(f"/api/{api}: expected a list of objects, got {type(value).__name__}")
    return value


def _stamp(item: dict[str, Any], api: str, now: datetime) -> datetime | None:
    value = item.get("last_activity")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _MAX_STAMP_CHARS:
        raise BadAnswer(f"/api/{api}: last_activity is not a timestamp")
    try:
        stamp = datetime.fromisoformat(value)
        stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadAnswer(f"/api/{api}: last_activity is not a timestamp") from None
    return min(stamp, now)


def _count(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise BadAnswer(f"{what} is not a count")
    return value


def probe(
    socket_path: Path, token: str, *, deadline: float = PROBE_DEADLINE_S, timeout: float | None = None
) -> Activity:
    """One look at the server: ``/api/status``, ``/api/kernels``, ``/api/terminals`` within one deadline.

    ``deadline`` bounds the whole look in seconds (``timeout`` is an older name for it). Raises
    ``launcher.adapters.jupyter_http.NoAnswer`` (an OSError) or ``BadAnswer`` (a ValueError); a 404 for
    terminals means they are disabled and counts as none.
    """
    budget = timeout if timeout is not None else deadline
    until = time.monotonic() + budget

    def get(api: str) -> Any:
        left = until - time.monotonic()
        if left <= 0:
            raise NoAnswer(f"/api/{api}: no answer within {budget:.3g} s")
        return api_get(socket_path, token, f"{api}?no_track_activity=1", deadline=left)

    status = get("status")
    if not isinstance(status, dict):
        raise BadAnswer(f"/api/status: expected an object, got {type(status).__name__}")
    connections = _count(status.get("connections"), "/api/status: connections")
    kernels = _objects(get("kernels"), "kernels")
    try:
        terminals = _objects(get("terminals"), "terminals")
    except BadAnswer as exc:
        if exc.status != 404:  # 404: terminals disabled
            raise
        terminals = []
    now = utcnow()
    # Not status["last_activity"]: it counts every API request, and an open JupyterLab tab polls the
    # API every few seconds, so an idle tab would keep the session alive forever (measured: it moves
    # every 10 s with an idle tab open while the kernel's stays put).
    stamps = [_stamp(k, "kernels", now) for k in kernels] + [_stamp(t, "terminals", now) for t in terminals]
    if any(not isinstance(k.get("execution_state") or "", str) for k in kernels):
        raise BadAnswer("/api/kernels: execution_state is not a string")
    busy = sum(1 for k in kernels if k.get("execution_state") == "busy")
    known = [s for s in stamps if s is not None]
    last = now if busy else (max(known) if known else None)
    return Activity(
        last_activity=last,
        kernels=len(kernels),
        kernels_busy=busy,
        connections=connections,
        terminals=len(terminals),
    )
