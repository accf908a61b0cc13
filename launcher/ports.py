"""The launcher's ports: what the domain needs from the outside, as small typed interfaces.

    SessionRepository   the session store (atomic reserve, apply a command, reads, audit)
    Dispatcher          hand container work to the host that owns a session
    Runtime             create / adopt, inspect, stop and list notebook containers on one engine
    NotebookProbe       ask a notebook's Jupyter server how it is (bounded in time and size)

Adapters implement them in ``launcher/adapters/`` (Redis, Celery, Docker, HTTP over a UNIX socket,
and an in-memory runtime); ``launcher/bootstrap.py`` wires them. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from launcher.spec import LABEL_PREFIX

if TYPE_CHECKING:
    from launcher.models import AuditEvent, HostInfo, Session, WorkspaceUsage
    from launcher.transitions import Command


class SessionRepository(Protocol):
    def launch(self, session: Session, *, actor: str, queue: bool = True) -> tuple[Session, list[Session]]: ...
    def reserve(self, session: Session, *, actor: str) -> Session: ...
    def admit(self, *, actor: str = "launcher") -> list[Session]: ...
    def hosts(self) -> list[HostInfo]: ...
    def set_draining(self, host: str, draining: bool) -> HostInfo: ...
    def forget_host(self, host: str) -> None: ...
    def waiting(self) -> list[Session]: ...
    def queue_stats(self) -> dict[str, float]: ...
    def recent_waits(self, limit: int = 1000) -> list[float]: ...
    def live_sessions_for(self, user: str) -> list[Session]: ...
    def apply(self, session_id: str, command: Command) -> Session: ...
    def adopt(self, session: Session, *, actor: str) -> bool: ...
    def get(self, session_id: str) -> Session | None: ...
    def require(self, session_id: str) -> Session: ...
    def live_session_for(self, user: str) -> Session | None: ...
    def latest_session_for(self, user: str) -> Session | None: ...
    def list_live(self, host: str | None = None) -> list[Session]: ...
    def list_recent(self, limit: int = 200) -> list[Session]: ...
    def count_live(self) -> int: ...
    def queue_position(self, session: Session) -> int | None: ...
    def batch_members(self, batch: str) -> list[Session]: ...
    def audit(self, *, limit: int = 200, user: str | None = None) -> list[AuditEvent]: ...
    def record_event(self, action: str, *, user: str, actor: str, reason: str = "", detail: str = "") -> None: ...
    def set_usage(self, user: str, usage: WorkspaceUsage) -> None: ...
    def usage(self, user: str) -> WorkspaceUsage | None: ...
    def notice_marks(self, user: str) -> dict[str, str]: ...
    def mark_notice(self, user: str, field: str, session_id: str) -> None: ...


LOG_MAX_BYTES = 8192  # a start log kept for people: the tail, never the whole output


class Dispatcher(Protocol):
    """Hands container work to the host that owns the session. Raises ``RuntimeUnavailable``."""

    def start(self, session: Session) -> None: ...
    def stop(self, session: Session) -> None: ...
    def discard(self, session: Session) -> None: ...


class ContainerState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    OOM_KILLED = "oom_killed"
    MISSING = "missing"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Handle:
    id: str
    name: str
    adopted: bool = False  # True when the container already existed (a retried start)


@dataclass(frozen=True)
class ManagedContainer:
    id: str
    name: str
    state: ContainerState
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def session_id(self) -> str:
        """Its session: the label of a container started for one; the name of a warm-pool container claimed by one
        (labels are fixed at boot, so a claim renames it ``<instance>-nb-<session>``)."""
        labelled = self.labels.get(f"{LABEL_PREFIX}.session", "")
        if labelled or not self.pool_slot:
            return labelled
        _, sep, tail = self.name.rpartition("-nb-")
        return tail if sep and re.fullmatch(r"[a-z0-9]{12}", tail) else ""

    @property
    def pool_slot(self) -> str:
        return self.labels.get(f"{LABEL_PREFIX}.pool", "")


@dataclass(frozen=True)
class EngineCapacity:
    """What a Docker engine's machine has (``docker info``): CPUs and memory in bytes."""

    cpus: int
    mem_bytes: int


class Runtime(Protocol):
    def capacity(self) -> EngineCapacity: ...
    def start(self, spec: dict[str, Any]) -> Handle: ...
    def claim(self, name: str, new_name: str, cpu_shares: int) -> Handle: ...
    def image_of(self, name: str) -> tuple[str, dict[str, str]]: ...
    def state(self, name: str) -> ContainerState: ...
    def stop(self, name: str, timeout: int = 10) -> None: ...
    def list_managed(self, instance: str) -> list[ManagedContainer]: ...
    def logs(self, name: str, tail: int = 40) -> str: ...


class NotebookProbe(Protocol):
    def __call__(self, socket_path: Path, token: str, *, deadline: float = 2.0) -> Any: ...


WaitReady = Callable[..., float]
