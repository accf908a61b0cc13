"""The service against a real Redis: bad input and refusals change nothing."""

from __future__ import annotations

import pytest
import redis

from launcher.adapters.redis_store import SessionStore
from launcher.errors import Conflict, InvalidRequest, LimitReached, NotFound, PermissionDenied
from launcher.models import Actor, Role, SessionStatus
from launcher.service import LauncherService
from tests.helpers import RecordingDispatcher, bring_to, register_hosts


@pytest.fixture
def svc(unit_settings, redis_url):
    settings = unit_settings.model_copy(update={"redis_url": redis_url})
    store = SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    register_hosts(store, settings.host_name)
    return LauncherService(settings, store, RecordingDispatcher())


def keys(svc) -> list[str]:
    """What the service wrote (the registered host is the fixture's)."""
    found = svc.store.redis.keys(svc.store.prefix + "*")
    return sorted(k for k in found if not k.startswith((svc.store.prefix + "hosts", svc.store.prefix + "host:")))


ANN = Actor(name="ann", role=Role.RESEARCHER)
ADMIN = Actor(name="root-admin", role=Role.ADMIN)
VIEWER = Actor(name="vic", role=Role.VIEWER)


@pytest.mark.parametrize(
    ("user", "template", "message"),
    [
        ("../x", "alpha_research", "invalid user id"),
        ("a/b", "alpha_research", "invalid user id"),
        ("", "alpha_research", "invalid user id"),
        ("x" * 300, "alpha_research", "invalid user id"),
        ("bob", "no_such_template", "unknown template"),
        ("bob", "../alpha_research", "invalid template name"),
        ("bob", "../../../etc/passwd", "invalid template name"),
    ],
)
def test_bad_input_is_refused_and_creates_nothing(svc, user, template, message):
    """Malformed users and templates raise InvalidRequest; no key, no folder, no task."""
    with pytest.raises(InvalidRequest, match=message):
        svc.launch(ADMIN, template, user=user)
    assert keys(svc) == []
    assert svc.dispatcher.sent == []
    assert not svc.settings.workspaces_dir.exists()


def test_viewer_is_refused_by_the_service(svc):
    """A viewer calling the service directly gets PermissionDenied, nothing recorded."""
    with pytest.raises(PermissionDenied, match="lacks LAUNCH_NOTEBOOKS"):
        svc.launch(VIEWER, "alpha_research")
    with pytest.raises(PermissionDenied):
        svc.stop_all(VIEWER)
    with pytest.raises(PermissionDenied):
        svc.list_sessions(ANN)
    assert keys(svc) == []


def test_researcher_cannot_launch_or_stop_for_others(svc):
    """Researchers act only on their own session."""
    with pytest.raises(PermissionDenied):
        svc.launch(ANN, "alpha_research", user="bob")
    svc.launch(ADMIN, "alpha_research", user="bob")
    with pytest.raises(PermissionDenied):
        svc.stop(ANN, "bob")


def test_second_launch_while_starting_is_a_conflict(svc):
    """A second launch while the first is queued or starting is refused; one start is enqueued."""
    first = svc.launch(ANN, "alpha_research")
    bring_to(svc.store, first.id, SessionStatus.STARTING)
    with pytest.raises(Conflict, match="already have a launch in progress"):
        svc.launch(ANN, "factor_analysis")
    assert [m[0] for m in svc.dispatcher.sent] == ["start"]


def test_stop_of_missing_session_is_not_found(svc):
    """Stopping a session that is not there says so and changes nothing."""
    with pytest.raises(NotFound, match="ann has no live notebook session"):
        svc.stop(ANN)
    with pytest.raises(NotFound):
        svc.stop(ADMIN, session_id="zzzzzzzzzzzz")
    assert keys(svc) == [] and svc.dispatcher.sent == []


def test_admin_stop_records_admin_reason_and_redacts_token(svc):
    """An admin stopping another user's session is recorded as 'admin'; nobody, owner included, gets the
    Jupyter secret from the service (the entry point adds it upstream)."""
    mine = svc.launch(ANN, "alpha_research")
    assert mine.token.get_secret_value() == "" and svc.store.get(mine.id).token.get_secret_value()
    stopped = svc.stop(ADMIN, "ann")
    assert stopped.status == SessionStatus.STOPPING and stopped.stop_reason == "admin"
    assert stopped.token.get_secret_value() == ""
    assert svc.dispatcher.sent[-1] == ("stop", mine.id)
    assert svc.store.get(mine.id).stop_requested_by == "admin:root-admin"
    assert all(s.token.get_secret_value() == "" for s in svc.list_sessions(ADMIN))


def test_profiles_are_per_role_and_bad_profiles_or_names_change_nothing(svc):
    """A researcher cannot take the admins' profile; an unknown profile or a malformed name is refused; none of it
    records anything. An admin gets the large profile's resources on the record."""
    with pytest.raises(PermissionDenied, match="'large' profile is for admin roles only"):
        svc.launch(ANN, "alpha_research", profile="large")
    with pytest.raises(InvalidRequest, match="unknown profile"):
        svc.launch(ANN, "alpha_research", profile="../huge")
    with pytest.raises(InvalidRequest, match="invalid session name"):
        svc.launch(ANN, "alpha_research", name="../../etc")
    assert keys(svc) == [] and svc.dispatcher.sent == []
    assert svc.profiles_for(ANN) == ["standard"] and svc.profiles_for(ADMIN) == ["standard", "large"]
    big = svc.launch(ADMIN, "alpha_research", profile="large", name="big-run")
    assert (big.profile, big.cpus, big.mem_bytes, big.name) == ("large", 4.0, 16 * 2**30, "big-run")


def test_a_users_cpu_quota_holds(svc):
    """LAUNCHER_MAX_USER_CPUS: a launch that would take a user's live sessions over it is refused."""
    svc.settings = svc.settings.model_copy(update={"max_sessions_per_user": 3, "max_user_cpus": 3.0})
    svc.store._settings = svc.settings
    first = svc.launch(ANN, "alpha_research")
    bring_to(svc.store, first.id, SessionStatus.RUNNING)
    with pytest.raises(LimitReached, match="your live sessions use 2 of your 3 CPUs"):
        svc.launch(ANN, "factor_analysis")
