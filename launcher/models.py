"""Typed records that cross every boundary: sessions, actors, audit events."""

from __future__ import annotations

import json
import secrets
import string
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    field_serializer,
)

from launcher.errors import SchemaMismatch

SCHEMA_VERSION = 3
SESSION_ID_ALPHABET = string.ascii_lowercase + string.digits
SESSION_ID_PATTERN = r"^[a-z0-9]{12}$"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_session_id() -> str:
    return "".join(secrets.choice(SESSION_ID_ALPHABET) for _ in range(12))


def new_token() -> SecretStr:
    return SecretStr(secrets.token_urlsafe(32))


class SessionStatus(StrEnum):
    WAITING = "waiting"  # in the admission queue: no host has room for it yet
    QUEUED = "queued"  # admitted and placed on a host: its start is on the host's queue
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def live(self) -> bool:
        return self in LIVE_STATUSES


LIVE_STATUSES = frozenset(
    {SessionStatus.WAITING, SessionStatus.QUEUED, SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.STOPPING}
)
TERMINAL_STATUSES = frozenset({SessionStatus.STOPPED, SessionStatus.ERROR})
# A launch in progress: a user has at most one (launcher.adapters.redis_store enforces it).
PENDING_STATUSES = frozenset({SessionStatus.WAITING, SessionStatus.QUEUED, SessionStatus.STARTING})


class Reason(StrEnum):
    """Why a session changed: the only values the audit stream's ``reason`` holds."""

    LAUNCH = "launch"  # reserved by a launch
    ADMITTED = "admitted"  # left the admission queue: placed on a host with room
    HOST_DOWN = "host_down"  # placed on a host that stopped answering before it started: back in the queue
    START = "start"  # a worker took it
    READY = "ready"  # Jupyter answered
    ACTIVITY = "activity"  # a heartbeat
    KEEPALIVE = "keepalive"  # the owner said "keep running"
    EXEMPT = "exempt"  # an admin exempted it from (or returned it to) the maximum age
    RECONCILE = "reconcile"  # adopted back after Redis lost it
    # Why a session ended (also its ``stop_reason``):
    USER = "user"  # the owner asked
    ADMIN = "admin"  # an admin or operator asked
    IDLE = "idle"  # no activity for longer than the idle timeout
    MAX_AGE = "max_age"  # older than the maximum age
    DIED = "died"  # the container exited by itself
    OOM = "oom"  # the container was killed for memory
    LOST = "lost"  # the container vanished
    START_FAILED = "start_failed"  # the container or Jupyter did not come up
    DISPATCH_FAILED = "dispatch_failed"  # the task queue refused the start
    NO_WORKER = "no_worker"  # queued past its deadline: no worker took it
    QUEUE_TIMEOUT = "queue_timeout"  # waited for room past the wait deadline
    START_TIMEOUT = "start_timeout"  # starting past its deadline
    STOP_TIMEOUT = "stop_timeout"  # stopping past its deadline: ended by force


StopReason = Reason  # the reasons a session ends are Reasons too


class Role(StrEnum):
    ADMIN = "admin"
    RESEARCHER = "researcher"
    VIEWER = "viewer"


class Permission(StrEnum):
    LAUNCH_NOTEBOOKS = "LAUNCH_NOTEBOOKS"
    MANAGE_NOTEBOOKS = "MANAGE_NOTEBOOKS"


class Actor(BaseModel):
    """Who asks: a console user, or an operator / system component."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: Role

    @classmethod
    def operator(cls, name: str = "operator") -> Actor:
        return cls(name=name, role=Role.ADMIN)


class Session(BaseModel):
    """One notebook session; stored as JSON in Redis by ``launcher.adapters.redis_store`` and nowhere else. Immutable:
    every change is a command (``launcher.transitions``) the store applies atomically."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    id: str = Field(pattern=SESSION_ID_PATTERN)
    user: str
    template: str
    name: str = ""  # the owner's name for it (defaults to the template); unique among their live sessions
    profile: str = "standard"
    cpus: float = 2.0  # what it reserves on its host and is limited to (from its profile at launch)
    mem_bytes: int = 4 * 2**30
    pids_limit: int = 512
    ticket: int = 0  # its place in the admission queue (arrival order)
    status: SessionStatus = SessionStatus.QUEUED
    status_since: datetime = Field(default_factory=utcnow)  # when it entered its status (for deadlines)
    phase: str | None = None  # what a live session is doing now, for people watching
    host: str | None = None
    container_id: str | None = None
    token: SecretStr
    url: str | None = None  # the session's own origin on its host's entry point
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    last_activity_at: datetime | None = None
    kernels_busy: int = 0
    connections: int = 0
    stopped_at: datetime | None = None
    stop_reason: StopReason | None = None
    stop_requested_by: str | None = None
    stop_batch: str | None = None  # the stop-all that asked, for its progress
    max_age_exempt: bool = False  # an admin exempted it from the maximum age
    error: str | None = None
    start_log: str | None = None  # a failed start: the last lines of its container's log, secrets scrubbed
    # "Relaunch exactly" pins what an earlier session ran: its image (by ID) and its template's version (by hash).
    image: str = Field("", pattern=r"^(|sha256:[0-9a-f]{64})$")
    template_sha256: str = Field("", pattern=r"^(|[0-9a-f]{64})$")
    pool_slot: str | None = None  # the warm-pool container it claimed (workers.pool), None for a cold start
    # The data snapshot it runs on (launcher.snapshots): "" = the current one, resolved and written here at start.
    snapshot: str = Field("", pattern=r"^(|legacy|[0-9a-f]{16})$")
    # What it runs on, recorded by its worker at start (launcher.provenance); {} before that and in older records.
    # (Redis's cjson writes an empty object back as [] when a transition rewrites the record: read as {}.)
    record: Annotated[dict[str, str], BeforeValidator(lambda v: {} if v == [] else v)] = Field(default_factory=dict)

    @field_serializer("token")
    def _dump_token(self, token: SecretStr, info: SerializationInfo) -> str:
        """The token is written out only for the state store (context ``{"secrets": True}``)."""
        if info.context and info.context.get("secrets"):
            return token.get_secret_value()
        return "**********"

    @property
    def millicpus(self) -> int:
        return round(self.cpus * 1000)

    @property
    def label(self) -> str:
        """How people call it: its name (the template's when they gave none)."""
        return self.name or self.template

    def to_storage(self) -> str:
        return self.model_dump_json(context={"secrets": True})

    @classmethod
    def from_storage(cls, raw: str | bytes) -> Session:
        """Read a stored record, upgrading older schema versions; a newer one is a clear error."""
        data = json.loads(raw)
        version = data.get("schema_version", 1) if isinstance(data, dict) else None
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"session record {str(data.get('id', '?'))[:12] if isinstance(data, dict) else '?'} has schema "
                f"version {version!r}; this launcher reads up to {SCHEMA_VERSION}: upgrade this process"
            )
        if version < 2:  # v1 had no status_since: count deadlines from creation
            data.setdefault("status_since", data.get("created_at"))
        if version < 3:  # v2 had no name or profile: one session per user, the old fixed limits
            data.setdefault("name", data.get("template", ""))
            data.setdefault("cpus", 2.0)
            data.setdefault("mem_bytes", 8 * 2**30)
        data["schema_version"] = SCHEMA_VERSION
        return cls.model_validate(data)

    def public(self) -> dict[str, Any]:
        """A JSON-ready view without the token, fit for admins, other users and logs."""
        data = self.model_dump(mode="json", exclude={"token"})
        return data

    def open_url(self) -> str | None:
        """Where the Open link goes: the session origin's start of the open flow (no secret in it;
        only the owner, logged in to the console, gets through)."""
        if self.url is None or self.status != SessionStatus.RUNNING:
            return None
        return f"{self.url.rstrip('/')}/_nbl/start"


class HostState(StrEnum):
    UP = "up"  # announcing itself; takes new sessions while it has room
    DRAINING = "draining"  # an admin drains it: no new sessions, the ones it runs run out
    DOWN = "down"  # its worker has not announced itself for longer than host_down_after_s


class HostInfo(BaseModel):
    """A Docker host as the registry sees it: what it offers, what is reserved on it, whether it answers."""

    model_config = ConfigDict(frozen=True)

    name: str
    state: HostState
    drained: bool  # set by an admin (a drained host that stops answering is down and drained)
    cpus: float  # what it offers sessions: the engine's CPUs minus the reserve, times the overcommit
    mem_bytes: int  # the engine's memory minus the reserve
    used_cpus: float
    used_mem_bytes: int
    sessions: int
    max_sessions: int
    engine_cpus: int
    engine_mem_bytes: int
    seen_at: datetime | None

    @property
    def free_cpus(self) -> float:
        return max(0.0, self.cpus - self.used_cpus)

    @property
    def free_mem_bytes(self) -> int:
        return max(0, self.mem_bytes - self.used_mem_bytes)

    def fits(self, cpus: float, mem_bytes: int) -> bool:
        return (
            self.state == HostState.UP
            and self.sessions < self.max_sessions
            and self.free_cpus + 1e-9 >= cpus
            and self.free_mem_bytes >= mem_bytes
        )


class AuditEvent(BaseModel):
    """One transition of one session, as appended to the audit stream."""

    model_config = ConfigDict(frozen=True)

    id: str
    time: datetime
    session_id: str
    user: str
    template: str
    host: str
    action: str  # the status reached, or a named action such as "keepalive"
    previous: str
    actor: str
    reason: str
    detail: str = ""


class WorkspaceUsage(BaseModel):
    """A user's workspace against its quota (measured on the Docker host: workers.quota)."""

    model_config = ConfigDict(frozen=True)

    used_bytes: int
    limit_bytes: int
    enforced: bool  # by the filesystem (a full workspace is ENOSPC) or only measured
    partial: bool = False  # the measurement stopped early: a lower bound
    measured_at: datetime = Field(default_factory=utcnow)

    @property
    def fraction(self) -> float:
        return self.used_bytes / self.limit_bytes if self.limit_bytes else 0.0

    @property
    def over(self) -> bool:
        return self.limit_bytes > 0 and self.used_bytes >= self.limit_bytes
