"""The session state machine in one screen: typed commands and the statuses each may start from.

    waiting ──► queued ──► starting ──► running ──► stopping ──► stopped
       │  ▲          │           │           │            │
       │  └─(host down)          │           │            │
       ├──(cancelled)──────────────────────────────────────────────► stopped
       └─────────┴──────────┴───────────┴───────────┴────────────► error

``waiting`` is the admission queue: a launch waits there, in arrival order, until a host has room for its
profile. Admission (waiting → queued, placed on a host) is done by the store's admission step
(``SessionStore.admit``), atomically with the placement, never by ``apply``; ``Admit`` below names it.

Every change to a session is one of these frozen commands, applied by the store as one atomic
compare-and-set (``SessionStore.apply``): it happens only when the current status is in
``ALLOWED_FROM[type(command)]``, and the same step keeps the live sets, the user lock, the seats and
the audit stream in step. Commands that do not change the status (``None`` target) patch fields.
Every reason is a ``Reason`` and every actor a ``By``; nothing else reaches the audit stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from launcher.models import LIVE_STATUSES, Reason, SessionStatus, utcnow

W = SessionStatus.WAITING
Q, S, R, X = SessionStatus.QUEUED, SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.STOPPING


class ActorKind(StrEnum):
    USER = "user"  # a console user acting on their own session
    ADMIN = "admin"  # a console admin or an operator (CLI) acting on anyone's
    WORKER = "worker"  # a host's worker
    REAPER = "reaper"  # the idle / max-age policy
    SWEEPER = "sweeper"  # the deadline sweep
    RECONCILER = "reconciler"  # containers against Redis
    LAUNCHER = "launcher"  # the service itself (e.g. a dispatch that failed)


@dataclass(frozen=True)
class By:
    """Who applies a command: a kind, and a name where one exists (a user, a host)."""

    kind: ActorKind
    name: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}" if self.name else self.kind.value


@dataclass(frozen=True)
class Command:
    """Base of every command: who and why. Subclasses add the fields they set."""

    by: By
    reason: Reason

    audit_action: str = field(default="", init=False, repr=False)  # '' for silent patches

    def patch(self) -> dict[str, Any]:
        """Fields written as they are."""
        return {}

    def newer(self) -> dict[str, datetime]:
        """Timestamp fields written only when later than the stored value."""
        return {}

    def detail(self) -> str:
        return ""


@dataclass(frozen=True)
class Admit(Command):
    """Placed on a host with room (applied only by the admission step, which picks the host)."""

    host: str = ""

    def patch(self) -> dict[str, Any]:
        return {"host": self.host}


@dataclass(frozen=True)
class Requeue(Command):
    """Its host went down before the start was taken: back to the admission queue, in its old place."""

    def patch(self) -> dict[str, Any]:
        return {"host": None, "container_id": None, "phase": None}


@dataclass(frozen=True)
class Cancel(Command):
    """A launch that was still waiting for room ends: nothing ran, nothing to clean up."""

    batch: str | None = None  # a stop-all's id, for its progress

    def patch(self) -> dict[str, Any]:
        return {"stop_reason": self.reason, "stop_requested_by": str(self.by), "stopped_at": utcnow(), "phase": None}


@dataclass(frozen=True)
class MarkStarting(Command):
    phase: str = "preparing workspace"

    def patch(self) -> dict[str, Any]:
        return {"phase": self.phase}


@dataclass(frozen=True)
class SetPhase(Command):
    phase: str = ""
    container_id: str | None = None

    def patch(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase}
        if self.container_id is not None:
            out["container_id"] = self.container_id
        return out


@dataclass(frozen=True)
class MarkRunning(Command):
    url: str = ""
    at: datetime = field(default_factory=utcnow)

    def patch(self) -> dict[str, Any]:
        return {"url": self.url, "started_at": self.at, "last_activity_at": self.at, "phase": None}


@dataclass(frozen=True)
class RecordActivity(Command):
    last_activity_at: datetime | None = None
    kernels_busy: int = 0
    connections: int = 0

    def patch(self) -> dict[str, Any]:
        return {"kernels_busy": self.kernels_busy, "connections": self.connections}

    def newer(self) -> dict[str, datetime]:
        return {"last_activity_at": self.last_activity_at} if self.last_activity_at else {}


@dataclass(frozen=True)
class KeepAlive(Command):
    at: datetime = field(default_factory=utcnow)
    audit_action: str = field(default="keepalive", init=False, repr=False)

    def newer(self) -> dict[str, datetime]:
        return {"last_activity_at": self.at}


@dataclass(frozen=True)
class SetMaxAgeExempt(Command):
    exempt: bool = True
    audit_action: str = field(default="max_age_exempt", init=False, repr=False)

    def patch(self) -> dict[str, Any]:
        return {"max_age_exempt": self.exempt}

    def detail(self) -> str:
        return "exempt" if self.exempt else "not exempt"


@dataclass(frozen=True)
class RequestStop(Command):
    batch: str | None = None  # a stop-all's id, for its progress

    def patch(self) -> dict[str, Any]:
        return {"stop_reason": self.reason, "stop_requested_by": str(self.by), "stop_batch": self.batch}


@dataclass(frozen=True)
class MarkStopped(Command):
    note: str = ""

    def patch(self) -> dict[str, Any]:
        return {"stopped_at": utcnow(), "phase": None}

    def detail(self) -> str:
        return self.note


@dataclass(frozen=True)
class MarkFailed(Command):
    error: str = ""

    def patch(self) -> dict[str, Any]:
        return {"error": self.error, "stop_reason": self.reason, "stopped_at": utcnow(), "phase": None}

    def detail(self) -> str:
        return self.error


@dataclass(frozen=True)
class FailStart(MarkFailed):
    """A start that failed: only while the session is still being started (never a running one that
    another delivery of the same start brought up)."""


@dataclass(frozen=True)
class RecordStartLog(Command):
    """Keep the last lines of a failed start's container log (already scrubbed) on the ended session."""

    text: str = ""

    def patch(self) -> dict[str, Any]:
        return {"start_log": self.text}


@dataclass(frozen=True)
class RecordProvenance(Command):
    """What a starting session runs on (launcher.provenance): its data snapshot and its record, written on the
    session and, as compact JSON, into the audit entry."""

    snapshot: str = ""
    record: tuple[tuple[str, str], ...] = ()  # frozen: the record's items
    audit_action: str = field(default="provenance", init=False, repr=False)

    def patch(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "record": dict(self.record)}

    def detail(self) -> str:
        return json.dumps(dict(self.record), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ClaimPool(Command):
    """A starting session took a warm-pool container (workers.pool): its slot, the container, and the secret the
    container booted with (the entry point adds it upstream; it never reaches the audit entry)."""

    slot: str = ""
    token: str = field(default="", repr=False)
    container_id: str = ""

    def patch(self) -> dict[str, Any]:
        return {"pool_slot": self.slot, "token": self.token, "container_id": self.container_id,
                "phase": "claimed a warm notebook"}


# The whole state machine: (statuses a command may start from, the status it moves to or None).
TRANSITIONS: dict[type[Command], tuple[frozenset[SessionStatus], SessionStatus | None]] = {
    Admit: (frozenset({W}), Q),
    Requeue: (frozenset({Q}), W),
    Cancel: (frozenset({W}), SessionStatus.STOPPED),
    MarkStarting: (frozenset({Q, S}), S),
    SetPhase: (frozenset({S}), None),
    MarkRunning: (frozenset({S}), R),
    RecordActivity: (frozenset({R}), None),
    KeepAlive: (frozenset({R}), None),
    SetMaxAgeExempt: (frozenset({W, Q, S, R}), None),
    RequestStop: (frozenset({Q, S, R}), X),
    MarkStopped: (frozenset({X}), SessionStatus.STOPPED),
    MarkFailed: (LIVE_STATUSES, SessionStatus.ERROR),
    FailStart: (frozenset({Q, S}), SessionStatus.ERROR),
    RecordStartLog: (frozenset({SessionStatus.ERROR}), None),
    RecordProvenance: (frozenset({S}), None),
    ClaimPool: (frozenset({S}), None),
}


def rule(command: Command) -> tuple[frozenset[SessionStatus], SessionStatus | None]:
    return TRANSITIONS[type(command)]


def action_of(command: Command) -> str:
    """What the audit stream records for this command ('' for none)."""
    _, target = rule(command)
    return target.value if target is not None else command.audit_action
