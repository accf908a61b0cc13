"""Per-session resource use, for admins: the last CPU and memory figures a host's heartbeat measured.

One JSON value per running session, ``<instance>:stats:<session id>``, written by the heartbeat
(``workers.cgroup_stats``) and expiring after three heartbeat intervals, so a session that stopped or a
host whose worker is down shows nothing rather than old figures. The value also keeps the raw CPU counter
it was computed from, which the next heartbeat needs for its CPU percentage. Kept apart from the session
record: these are measurements, rewritten every heartbeat, never part of the state machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis

from launcher.settings import Settings


@dataclass(frozen=True)
class SessionStats:
    """What a heartbeat measured of one session's container (None: not known)."""

    cpu_percent: float | None  # of one CPU, over the time since the previous heartbeat (100 = one core busy)
    mem_bytes: int | None  # in use, without the inactive page cache (as ``docker stats`` counts it)
    mem_limit_bytes: int | None
    measured_at: datetime
    cpu_usage_ns: int | None = None  # the raw counter this was computed from (for the next heartbeat)
    sampled_at: float | None = None  # its wall-clock time (seconds since the epoch)

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["measured_at"] = self.measured_at.isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> SessionStats | None:
        """The stored figures, or None for anything malformed (they are only ever shown)."""
        try:
            data = json.loads(raw)
            return cls(
                cpu_percent=_number(data.get("cpu_percent"), float),
                mem_bytes=_number(data.get("mem_bytes"), int),
                mem_limit_bytes=_number(data.get("mem_limit_bytes"), int),
                measured_at=datetime.fromisoformat(data["measured_at"]),
                cpu_usage_ns=_number(data.get("cpu_usage_ns"), int),
                sampled_at=_number(data.get("sampled_at"), float),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def _number(value: object, kind: type[int] | type[float]) -> Any:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return kind(value)


class StatsStore:
    """Reads and writes ``<instance>:stats:<sid>`` (a Redis client with ``decode_responses=True``)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r: Any = client
        self.prefix = f"{settings.instance}:stats:"
        self.ttl_s = max(1, math.ceil(3 * settings.heartbeat_interval_s))

    def put(self, session_id: str, stats: SessionStats) -> None:
        self._r.set(self.prefix + session_id, stats.to_json(), ex=self.ttl_s)

    def get(self, session_id: str) -> SessionStats | None:
        raw = self._r.get(self.prefix + session_id)
        return SessionStats.from_json(raw) if raw else None

    def get_many(self, session_ids: Iterable[str]) -> dict[str, SessionStats]:
        """The stats of these sessions that are known (one round trip)."""
        ids = list(session_ids)
        if not ids:
            return {}
        found: dict[str, SessionStats] = {}
        for sid, raw in zip(ids, self._r.mget([self.prefix + sid for sid in ids]), strict=True):
            stats = SessionStats.from_json(raw) if raw else None
            if stats is not None:
                found[sid] = stats
        return found
