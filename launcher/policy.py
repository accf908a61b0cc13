"""Reaping policy: one pure predicate, table-tested in tests/test_policy.py.

Tasks gather facts (the session's stored activity) and act on the decision; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from launcher.models import Session, SessionStatus, StopReason
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
    reason: StopReason | None
    why: str


def last_active(session: Session) -> datetime | None:
    return session.last_activity_at or session.started_at


def should_reap(session: Session, now: datetime, policy: ReapPolicy) -> Decision:
    """Whether a session should be stopped now, and why.

    Only running sessions are reaped. A busy kernel is work in progress, whatever the timestamps say
    (kernel activity is updated only when a kernel sends output): it is never reaped, not even for age.
    """
    if session.status != SessionStatus.RUNNING:
        return Decision(Verdict.KEEP, None, f"not running ({session.status.value})")
    if session.kernels_busy > 0:
        return Decision(Verdict.KEEP, None, f"{session.kernels_busy} kernel(s) busy")
    if policy.max_age is not None and session.started_at is not None and now - session.started_at >= policy.max_age:
        return Decision(Verdict.REAP, StopReason.MAX_AGE, f"older than {policy.max_age}")
    active = last_active(session)
    if active is None:
        return Decision(Verdict.KEEP, None, "no activity recorded yet")
    idle = now - active
    if idle >= policy.idle_timeout:
        return Decision(Verdict.REAP, StopReason.IDLE, f"idle for {idle} (timeout {policy.idle_timeout})")
    return Decision(Verdict.KEEP, None, f"idle for {idle}")


def time_left(session: Session, now: datetime, policy: ReapPolicy) -> timedelta | None:
    """How long until an idle reap, if nothing happens (None when the session is not running)."""
    active = last_active(session)
    if session.status != SessionStatus.RUNNING or active is None:
        return None
    left = policy.idle_timeout - (now - active)
    if policy.max_age is not None and session.started_at is not None:
        left = min(left, policy.max_age - (now - session.started_at))
    return max(left, timedelta(0))
