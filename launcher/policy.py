"""Reaping policy: one pure predicate, table-tested in tests/test_policy.py.

Tasks gather facts (the session's stored activity) and act on the decision; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from launcher.models import Reason, Session, SessionStatus
from launcher.settings import Settings


class Verdict(StrEnum):
    KEEP = "keep"
    REAP = "reap"


@dataclass(frozen=True)
class ReapPolicy:
    idle_timeout: timedelta
    max_age: timedelta | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ReapPolicy:
        max_age = timedelta(seconds=settings.max_age_s) if settings.max_age_s else None
        return cls(idle_timeout=timedelta(seconds=settings.idle_timeout_s), max_age=max_age)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: Reason | None
    why: str


def last_active(session: Session) -> datetime | None:
    return session.last_activity_at or session.started_at


def should_reap(session: Session, now: datetime, policy: ReapPolicy) -> Decision:
    """Whether a session should be stopped now, and why.

    Only running sessions are reaped. The maximum age applies to every session an admin has not
    exempted, busy or not (the console warns before it, so the owner can save and ask). Below it, a busy
    kernel is work in progress whatever the timestamps say (kernel activity is updated only when a
    kernel sends output), so a busy session is not reaped for idleness; a server that stops answering
    is recorded with no busy kernel, so a hung "busy" session cannot hold its seat forever.
    """
    if session.status != SessionStatus.RUNNING:
        return Decision(Verdict.KEEP, None, f"not running ({session.status.value})")
    started, limit = session.started_at, policy.max_age
    if limit is not None and started is not None and not session.max_age_exempt and now - started >= limit:
        return Decision(Verdict.REAP, Reason.MAX_AGE, f"older than {limit}")
    if session.kernels_busy > 0:
        return Decision(Verdict.KEEP, None, f"{session.kernels_busy} kernel(s) busy")
    active = last_active(session)
    if active is None:
        return Decision(Verdict.KEEP, None, "no activity recorded yet")
    idle = now - min(active, now)  # a timestamp later than now counts as now, never as "never idle"
    if idle >= policy.idle_timeout:
        return Decision(Verdict.REAP, Reason.IDLE, f"idle for {idle} (timeout {policy.idle_timeout})")
    return Decision(Verdict.KEEP, None, f"idle for {idle}")


def time_left(session: Session, now: datetime, policy: ReapPolicy) -> timedelta | None:
    """How long until an idle reap, if nothing happens (None when the session is not running)."""
    active = last_active(session)
    if session.status != SessionStatus.RUNNING or active is None:
        return None
    left = policy.idle_timeout - (now - min(active, now))
    if policy.max_age is not None and session.started_at is not None and not session.max_age_exempt:
        left = min(left, policy.max_age - (now - session.started_at))
    return max(left, timedelta(0))


# -- deadlines of the non-terminal states ---------------------------------------------------------


class Due(StrEnum):
    """What the deadline sweep does to one session."""

    NOTHING = "nothing"
    FAIL_WAITING = "fail_waiting"  # waited for room past the wait deadline
    REQUEUE = "requeue"  # admitted to a host that went down before starting it: back to the queue
    RESEND_START = "resend_start"  # queued a while: the start may have been lost; sending it again is safe
    RESEND_STOP = "resend_stop"  # stopping a while: the stop may have been lost (a broker outage)
    FAIL_QUEUED = "fail_queued"  # queued past its deadline: no worker took it
    FAIL_STARTING = "fail_starting"  # starting past its deadline
    FORCE_STOPPED = "force_stopped"  # stopping past its deadline


@dataclass(frozen=True)
class Deadlines:
    waiting: timedelta
    queued: timedelta
    starting: timedelta
    stopping: timedelta
    resend_after: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> Deadlines:
        return cls(
            waiting=timedelta(seconds=settings.queue_wait_deadline_s),
            queued=timedelta(seconds=settings.queued_deadline_s),
            starting=timedelta(seconds=settings.starting_deadline_s),
            stopping=timedelta(seconds=settings.stopping_deadline_s),
            resend_after=timedelta(seconds=settings.resend_after_s),
        )


def deadline_due(session: Session, now: datetime, deadlines: Deadlines, *, host_down: bool = False) -> Due:
    """What a live session's time in its status calls for (pure; table-tested). ``host_down``: its host has not
    announced itself for longer than ``host_down_after_s``."""
    waited = now - session.status_since
    if session.status == SessionStatus.WAITING:
        return Due.FAIL_WAITING if waited >= deadlines.waiting else Due.NOTHING
    if session.status == SessionStatus.QUEUED and host_down:
        return Due.REQUEUE
    if session.status == SessionStatus.QUEUED:
        if waited >= deadlines.queued:
            return Due.FAIL_QUEUED
        return Due.RESEND_START if waited >= deadlines.resend_after else Due.NOTHING
    if session.status == SessionStatus.STARTING:
        return Due.FAIL_STARTING if waited >= deadlines.starting else Due.NOTHING
    if session.status == SessionStatus.STOPPING:
        if waited >= deadlines.stopping:
            return Due.FORCE_STOPPED
        return Due.RESEND_STOP if waited >= deadlines.resend_after else Due.NOTHING
    return Due.NOTHING
