"""The console's typed views are pure: a table of sessions, usages and clocks."""

from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from launcher.models import Reason, Session, SessionStatus, WorkspaceUsage
from launcher.views import REASON_TEXT, session_view

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def make(status=SessionStatus.RUNNING, **kw) -> Session:
    base = dict(
        id="abcdefghij12",
        user="ann",
        template="alpha_research",
        status=status,
        token=SecretStr("secret-of-the-session"),
        status_since=NOW - timedelta(minutes=2),
        started_at=NOW - timedelta(hours=1),
        last_activity_at=NOW - timedelta(minutes=10),
        url="http://abcdefghij12.nb.localhost:8080",
    )
    return Session(**{**base, **kw})


def test_running_view_counts_down_and_warns(unit_settings):
    """A running session shows its Open link (no secret) and the time until an idle stop; near it, a warning."""
    settings = unit_settings.model_copy(update={"idle_timeout_s": 3600, "warn_before_reap_s": 900})
    calm = session_view(make(), settings, NOW)
    assert calm.open_url == "http://abcdefghij12.nb.localhost:8080/_nbl/start"
    assert calm.time_left == timedelta(minutes=50) and not calm.reap_warning
    assert "secret-of-the-session" not in repr(calm)
    near = session_view(make(last_activity_at=NOW - timedelta(minutes=50)), settings, NOW)
    assert near.time_left == timedelta(minutes=10) and near.reap_warning


def test_ended_views_say_why_in_words(unit_settings):
    """Every reason a session can end with has words for its owner; a live session has none."""
    assert {r for r in Reason if r.value in {"user", "admin", "idle", "max_age", "died", "oom", "lost"}} <= set(
        REASON_TEXT
    )
    for reason, text in REASON_TEXT.items():
        view = session_view(make(SessionStatus.STOPPED, stop_reason=reason), unit_settings, NOW)
        assert view.ended_because == text and not view.live
    assert session_view(make(), unit_settings, NOW).ended_because == ""


def test_queued_too_long_and_workspace_warnings(unit_settings):
    """A launch no worker took shows it; a workspace near its quota warns."""
    settings = unit_settings.model_copy(update={"task_pickup_timeout_s": 30, "workspace_warn_fraction": 0.9})
    waiting = session_view(make(SessionStatus.QUEUED, status_since=NOW - timedelta(seconds=45)), settings, NOW)
    assert waiting.no_worker_yet and waiting.waited == timedelta(seconds=45)
    fresh = session_view(make(SessionStatus.QUEUED, status_since=NOW - timedelta(seconds=5)), settings, NOW)
    assert not fresh.no_worker_yet
    full = WorkspaceUsage(used_bytes=95, limit_bytes=100, enforced=True)
    assert session_view(make(), settings, NOW, usage=full).workspace_warning
    roomy = WorkspaceUsage(used_bytes=10, limit_bytes=100, enforced=True)
    assert not session_view(make(), settings, NOW, usage=roomy).workspace_warning
