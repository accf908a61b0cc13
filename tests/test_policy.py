"""The reap decision is a pure function: a table of sessions and clocks."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from launcher.models import Reason, Session, SessionStatus
from launcher.policy import Deadlines, Due, ReapPolicy, Verdict, deadline_due, should_reap, time_left

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)


def session(
    status=SessionStatus.RUNNING, idle=timedelta(0), age=2 * H, busy=0, last=True, exempt=False, since=None
) -> Session:
    return Session(
        status_since=NOW - (since if since is not None else age),
        max_age_exempt=exempt,
        id="abcdefghij12",
        user="ann",
        template="alpha_research",
        status=status,
        token=SecretStr("t"),
        started_at=NOW - age,
        last_activity_at=(NOW - idle) if last else None,
        kernels_busy=busy,
    )


FOUR_H = ReapPolicy(idle_timeout=4 * H)
WITH_AGE = ReapPolicy(idle_timeout=4 * H, max_age=12 * H)


@pytest.mark.parametrize(
    ("case", "s", "policy", "verdict", "reason"),
    [
        ("fresh activity", session(idle=timedelta(minutes=5)), FOUR_H, Verdict.KEEP, None),
        ("just under the timeout", session(idle=4 * H - timedelta(seconds=1)), FOUR_H, Verdict.KEEP, None),
        ("exactly the timeout", session(idle=4 * H, age=5 * H), FOUR_H, Verdict.REAP, Reason.IDLE),
        ("long idle", session(idle=9 * H, age=10 * H), FOUR_H, Verdict.REAP, Reason.IDLE),
        ("busy kernel, stale timestamps", session(idle=9 * H, age=10 * H, busy=1), FOUR_H, Verdict.KEEP, None),
        ("busy kernel past max age", session(idle=9 * H, age=20 * H, busy=2), WITH_AGE, Verdict.REAP, Reason.MAX_AGE),
        (
            "busy, past max age, exempted by an admin",
            session(age=20 * H, busy=2, exempt=True),
            WITH_AGE,
            Verdict.KEEP,
            None,
        ),
        (
            "idle, exempt from max age: idle still reaps",
            session(idle=5 * H, age=20 * H, exempt=True),
            WITH_AGE,
            Verdict.REAP,
            Reason.IDLE,
        ),
        ("a timestamp in the future counts as now", session(idle=-50 * H, age=5 * H), FOUR_H, Verdict.KEEP, None),
        ("active but past max age", session(idle=timedelta(0), age=13 * H), WITH_AGE, Verdict.REAP, Reason.MAX_AGE),
        ("active, under max age", session(idle=timedelta(0), age=11 * H), WITH_AGE, Verdict.KEEP, None),
        ("no activity stamp: start time counts", session(age=5 * H, last=False), FOUR_H, Verdict.REAP, Reason.IDLE),
        (
            "starting sessions are never reaped",
            session(status=SessionStatus.STARTING, idle=9 * H),
            FOUR_H,
            Verdict.KEEP,
            None,
        ),
        (
            "stopping sessions are left alone",
            session(status=SessionStatus.STOPPING, idle=9 * H),
            FOUR_H,
            Verdict.KEEP,
            None,
        ),
    ],
)
def test_should_reap_table(case, s, policy, verdict, reason):
    """Idle past the timeout reaps unless a kernel is busy; past max age reaps busy or not unless exempt;
    a non-running session never is."""
    decision = should_reap(s, NOW, policy)
    assert (decision.verdict, decision.reason) == (verdict, reason), case


def test_time_left():
    """Time left counts down from the last activity, capped by max age, never negative."""
    assert time_left(session(idle=3 * H), NOW, FOUR_H) == H
    assert time_left(session(idle=9 * H), NOW, FOUR_H) == timedelta(0)
    assert time_left(session(idle=timedelta(0), age=11 * H + timedelta(minutes=30)), NOW, WITH_AGE) == timedelta(
        minutes=30
    )
    assert time_left(session(status=SessionStatus.STOPPED), NOW, FOUR_H) is None


D = Deadlines(waiting=30 * M, queued=5 * M, starting=5 * M, stopping=2 * M, resend_after=timedelta(seconds=30))


@pytest.mark.parametrize(
    ("status", "since", "due"),
    [
        (SessionStatus.WAITING, 29 * M, Due.NOTHING),
        (SessionStatus.WAITING, 30 * M, Due.FAIL_WAITING),
        (SessionStatus.QUEUED, timedelta(seconds=10), Due.NOTHING),
        (SessionStatus.QUEUED, timedelta(seconds=40), Due.RESEND_START),
        (SessionStatus.QUEUED, 5 * M, Due.FAIL_QUEUED),
        (SessionStatus.STARTING, 4 * M, Due.NOTHING),
        (SessionStatus.STARTING, 6 * M, Due.FAIL_STARTING),
        (SessionStatus.STOPPING, timedelta(seconds=10), Due.NOTHING),
        (SessionStatus.STOPPING, timedelta(seconds=31), Due.RESEND_STOP),
        (SessionStatus.STOPPING, 2 * M, Due.FORCE_STOPPED),
        (SessionStatus.RUNNING, 100 * H, Due.NOTHING),
        (SessionStatus.STOPPED, 100 * H, Due.NOTHING),
    ],
)
def test_deadline_table(status, since, due):
    """Each non-terminal state has a deadline; queued and stopping sessions get their task again first."""
    assert deadline_due(session(status=status, since=since), NOW, D) == due


@pytest.mark.parametrize(
    ("status", "due"),
    [
        (SessionStatus.QUEUED, Due.REQUEUE),  # never started there: back to the queue, in its old place
        (SessionStatus.WAITING, Due.NOTHING),
        (SessionStatus.RUNNING, Due.NOTHING),  # shown as "host unreachable"; its state is unknown, not ended
        (SessionStatus.STARTING, Due.NOTHING),
    ],
)
def test_deadlines_on_a_down_host(status, due):
    """A launch placed on a host that went down before starting it is requeued at once; nothing else changes."""
    assert deadline_due(session(status=status, since=timedelta(seconds=1)), NOW, D, host_down=True) == due
