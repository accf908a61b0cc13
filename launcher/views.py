"""Typed views the console and the CLI render: what a person sees of a session, a template, a stop-all.

Built by pure functions from the records and a clock, so countdowns, warnings and the words for why a
session ended are decided here once (and table-tested), not in the pages.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

from launcher.models import AuditEvent, Reason, Session, SessionStatus, WorkspaceUsage
from launcher.policy import ReapPolicy, time_left
from launcher.provenance import RECORD_FIELDS
from launcher.settings import Settings

# Why a session ended, in words for its owner ("... stopped because <text>").
REASON_TEXT: dict[Reason, str] = {
    Reason.USER: "you stopped it",
    Reason.ADMIN: "an administrator stopped it",
    Reason.IDLE: "it was idle for too long",
    Reason.MAX_AGE: "it reached the maximum session age",
    Reason.DIED: "its container stopped unexpectedly",
    Reason.OOM: "it ran out of memory",
    Reason.LOST: "its container disappeared",
    Reason.START_FAILED: "it failed to start",
    Reason.DISPATCH_FAILED: "the task queue could not take the launch",
    Reason.NO_WORKER: "no worker took the launch in time",
    Reason.START_TIMEOUT: "it did not come up in time",
    Reason.STOP_TIMEOUT: "it was stopped by force after its stop took too long",
}


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    description: str
    data: str


@cache
def _template(path: Path, mtime: float) -> Template:
    meta = json.loads(path.read_text()).get("metadata", {}).get("launcher", {})
    return Template(
        name=path.stem,
        title=meta.get("title", path.stem.replace("_", " ").title()),
        description=meta.get("description", ""),
        data=meta.get("data", ""),
    )


def template(templates_dir: Path, name: str) -> Template:
    """A template's title and description from its notebook metadata (cached per file version)."""
    path = templates_dir / f"{name}.ipynb"
    try:
        return _template(path, path.stat().st_mtime)
    except (OSError, ValueError):
        return Template(name=name, title=name.replace("_", " ").title(), description="", data="")


_RECORD_ORDER = {name: i for i, name in enumerate(RECORD_FIELDS)}


@dataclass(frozen=True)
class SessionView:
    """One session as its owner (or an admin) sees it. Never carries the Jupyter secret."""

    id: str
    user: str
    template: Template
    name: str  # the owner's name for it
    profile: str
    cpus: float
    mem_bytes: int
    status: SessionStatus
    host: str
    phase: str
    open_url: str | None
    created_at: datetime
    started_at: datetime | None
    last_activity_at: datetime | None
    kernels_busy: int
    waited: timedelta  # in the current status
    queue_position: int | None
    no_worker_yet: bool  # queued for longer than a worker should take
    time_left: timedelta | None  # until an idle or max-age stop, if nothing happens
    reap_warning: bool  # time_left is within the warning window
    max_age_exempt: bool
    ended_because: str  # "" while live; why it ended, in words
    error: str
    workspace: WorkspaceUsage | None
    workspace_warning: bool
    start_log: str = ""  # a failed start: the last lines of its container's output, scrubbed
    stopped_at: datetime | None = None
    host_down: bool = False  # its host's worker stopped answering: its state is not known now
    record: dict[str, str] = field(default_factory=dict)  # what it runs on (launcher.provenance); {} before its start

    @property
    def state_text(self) -> str:
        """Its status in words (a session on a host that does not answer is not shown as running)."""
        if self.host_down and self.status.live and self.status != SessionStatus.WAITING:
            return "host unreachable"
        return {SessionStatus.WAITING: "waiting for room", SessionStatus.QUEUED: "placed"}.get(
            self.status, self.status.value
        )

    @property
    def live(self) -> bool:
        return self.status.live


def session_view(
    session: Session,
    settings: Settings,
    now: datetime,
    *,
    queue_position: int | None = None,
    usage: WorkspaceUsage | None = None,
    host_down: bool = False,
) -> SessionView:
    left = time_left(session, now, ReapPolicy.from_settings(settings))
    ended = ""
    if not session.status.live:
        ended = REASON_TEXT.get(session.stop_reason, "") if session.stop_reason else ""
    waited = max(now - session.status_since, timedelta(0))
    queued = session.status == SessionStatus.QUEUED
    return SessionView(
        id=session.id,
        user=session.user,
        template=template(settings.templates_dir, session.template),
        name=session.label,
        profile=session.profile,
        cpus=session.cpus,
        mem_bytes=session.mem_bytes,
        status=session.status,
        host=session.host or "",
        phase=session.phase or "",
        open_url=session.open_url(),
        created_at=session.created_at,
        started_at=session.started_at,
        last_activity_at=session.last_activity_at,
        kernels_busy=session.kernels_busy,
        waited=waited,
        queue_position=queue_position,
        no_worker_yet=queued and waited.total_seconds() > settings.task_pickup_timeout_s,
        time_left=left,
        reap_warning=left is not None and left.total_seconds() <= settings.warn_before_reap_s,
        max_age_exempt=session.max_age_exempt,
        ended_because=ended,
        error=session.error or "",
        workspace=usage,
        workspace_warning=usage is not None and usage.fraction >= settings.workspace_warn_fraction,
        start_log=scrub(session.start_log or "", [session.token.get_secret_value()]),
        stopped_at=session.stopped_at,
        host_down=host_down,
        record=dict(sorted(session.record.items(), key=lambda kv: _RECORD_ORDER.get(kv[0], len(_RECORD_ORDER)))),
    )


# -- progress of a launch ------------------------------------------------------------------------------

# The steps a launch goes through, as its owner reads them (the index is the step reached).
PHASES: tuple[str, ...] = (
    "Waiting for room",  # in the admission queue
    "Placing",  # admitted to a host: its worker takes the start
    "Preparing the workspace and container",
    "Starting Jupyter",
    "Ready",
)


@dataclass(frozen=True)
class Progress:
    """Where a launch is: the step, its words, the time since the launch and the usual total."""

    step: int  # index into PHASES
    label: str
    elapsed: timedelta
    typical: timedelta | None
    fraction: float  # for a progress bar; never 1.0 before ready, never backwards between steps


def progress(view: SessionView, now: datetime, typical: timedelta | None) -> Progress:
    """The launch progress of a session (queued, starting or running)."""
    elapsed = max(now - view.created_at, timedelta(0))
    if view.status == SessionStatus.WAITING:
        step = 0
        label = f"Waiting for room: number {view.queue_position or 1} in the queue"
    elif view.status == SessionStatus.QUEUED:
        step, label = 1, f"Placing on {view.host}"
    elif view.status == SessionStatus.STARTING and "jupyter" in view.phase.lower():
        step, label = 3, "Starting Jupyter"
    elif view.status == SessionStatus.STARTING:
        step, label = 2, "Preparing the workspace and container"
    else:
        step, label = 4, "Ready"
    floor = step / (len(PHASES) - 1)
    if step == len(PHASES) - 1:
        fraction = 1.0
    else:
        ceiling = (step + 1) / (len(PHASES) - 1) - 0.02
        guess = elapsed / typical if typical and typical.total_seconds() > 0 else 0.0
        fraction = min(ceiling, max(floor + 0.02, min(0.97, guess)))
    return Progress(step=step, label=label, elapsed=elapsed, typical=typical, fraction=fraction)


def typical_launch(events: Iterable[AuditEvent], recent: int = 20) -> timedelta | None:
    """The median time from launch (queued) to running over the most recent launches in ``events``."""
    queued: dict[str, datetime] = {}
    ready: dict[str, datetime] = {}
    for e in events:
        if e.action == "queued":
            queued[e.session_id] = e.time
        elif e.action == "running" and e.previous == "starting":
            ready[e.session_id] = e.time
    durations = sorted(
        ((ready[sid], (ready[sid] - queued[sid]).total_seconds()) for sid in ready if sid in queued),
        reverse=True,
    )[:recent]
    values = [d for _, d in durations if d >= 0]
    return timedelta(seconds=statistics.median(values)) if values else None


def admission_interval(events: Iterable[AuditEvent], recent: int = 20) -> timedelta | None:
    """The median time between successive admissions of launches that had to wait (oldest events first): how
    fast the queue moves, for a waiting launch's estimate (position times this)."""
    times = []
    for e in events:
        if e.action == "queued" and e.reason == "admitted":
            try:
                waited = float(e.detail or 0)
            except ValueError:
                continue
            if waited >= 0.5:
                times.append(e.time)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)][-recent:]
    return timedelta(seconds=statistics.median(gaps)) if gaps else None


# -- scrubbing what people may read --------------------------------------------------------------------

_TOKENISH = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:token|secret|password|passwd|key|authorization|bearer|cookie)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+"),
    re.compile(r"()(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])"),  # long random-looking strings
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets and anything that looks like a token replaced by ``[hidden]``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[hidden]")
    for pattern in _TOKENISH:
        text = pattern.sub(lambda m: m.group(1) + "[hidden]", text)
    return text
