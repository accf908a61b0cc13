"""Worker lifecycle logic with the in-memory runtime: failures clean up, repeats are harmless."""

from __future__ import annotations

import fakeredis
import pytest

from launcher.adapters.memory_runtime import FakeRuntime
from launcher.adapters.redis_store import SessionStore
from launcher.errors import StartFailed
from launcher.flows import request_stop
from launcher.models import Reason, Session, SessionStatus, new_session_id, new_token
from launcher.transitions import ActorKind, By
from tests.helpers import RecordingDispatcher, bring_to, register_hosts
from workers import hostfs, lifecycle


def no_socket_here(monkeypatch) -> None:
    """The in-memory runtime starts no Jupyter, so there is no socket to lock or secret to retire."""
    monkeypatch.setattr(hostfs, "lock_socket", lambda *a: None)
    monkeypatch.setattr(hostfs, "retire_secret", lambda *a: None)


@pytest.fixture
def ctx(unit_settings):
    store = SessionStore(fakeredis.FakeRedis(decode_responses=True), unit_settings)
    register_hosts(store, unit_settings.host_name)
    return lifecycle.WorkerContext(unit_settings, store, FakeRuntime())


def reserve(ctx, user="ann"):
    return ctx.store.reserve(
        Session(id=new_session_id(), user=user, template="alpha_research", token=new_token()), actor=user
    )


def test_failed_start_ends_in_error_and_leaves_nothing(ctx):
    """A start the engine refuses ends in error with the person-facing reason; no container, no folder."""
    s = reserve(ctx)
    ctx.runtime.fail_next_start = StartFailed("the notebook image is missing on this Docker host")
    result = lifecycle.start(ctx, s.id)
    assert result.status == SessionStatus.ERROR
    assert result.error == "the notebook image is missing on this Docker host"
    assert ctx.runtime.containers == {}
    assert not (ctx.settings.sessions_dir / s.id).exists()
    assert ctx.store.live_session_for("ann") is None  # the user may try again


def test_start_that_never_answers_is_cleaned_up(ctx):
    """A container whose Jupyter never answers is removed and the session ends in error."""
    ctx.settings = ctx.settings.model_copy(update={"start_timeout_s": 0.3})
    s = reserve(ctx)
    result = lifecycle.start(ctx, s.id)
    assert result.status == SessionStatus.ERROR and "did not answer within" in result.error
    assert ctx.runtime.containers == {}


def test_stop_is_idempotent_and_start_after_stop_does_nothing(ctx):
    """Stopping twice is harmless; a start delivered after a stop creates nothing."""
    s = reserve(ctx)
    request_stop(ctx.store, RecordingDispatcher(), s.id, By(ActorKind.USER, "ann"), Reason.USER)
    first = lifecycle.stop(ctx, s.id)
    second = lifecycle.stop(ctx, s.id)
    assert first.status == second.status == SessionStatus.STOPPED and first.stop_reason == "user"
    late = lifecycle.start(ctx, s.id)
    assert late.status == SessionStatus.STOPPED and ctx.runtime.containers == {}
    assert [e.action for e in ctx.store.audit(user="ann")].count("stopped") == 1


def test_duplicate_start_does_not_remove_the_winners_container(ctx, monkeypatch):
    """Two deliveries of one start racing: the one that loses the final compare-and-set leaves the
    running container alone (it removes only what a stop superseded)."""
    s = reserve(ctx)

    def other_delivery_wins(*args, **kwargs):
        bring_to(ctx.store, s.id, SessionStatus.RUNNING)
        return 0.01

    monkeypatch.setattr(lifecycle, "wait_ready", other_delivery_wins)
    no_socket_here(monkeypatch)
    result = lifecycle.start(ctx, s.id)
    assert result.status == SessionStatus.RUNNING
    assert len(ctx.runtime.containers) == 1  # the winner's container is still there


def test_stop_during_start_removes_what_the_start_made(ctx, monkeypatch):
    """A stop that lands while Jupyter is booting wins; the start removes its container."""
    s = reserve(ctx)

    def stop_arrives(*args, **kwargs):
        request_stop(ctx.store, RecordingDispatcher(), s.id, By(ActorKind.USER, "ann"), Reason.USER)
        return 0.01

    monkeypatch.setattr(lifecycle, "wait_ready", stop_arrives)
    no_socket_here(monkeypatch)
    result = lifecycle.start(ctx, s.id)
    assert result.status == SessionStatus.STOPPING
    assert ctx.runtime.containers == {}


def test_a_copy_of_a_start_in_flight_returns_at_once(ctx, monkeypatch):
    """A start resent while the same start still runs in this worker (a sweep resend during an outage)
    returns at once instead of taking a second worker thread into the same retry loop."""
    s = reserve(ctx)
    seen = []

    def copy_arrives(*args, **kwargs):
        seen.append(lifecycle.start(ctx, s.id))  # the resend, while the first is waiting for Jupyter
        return 0.01

    monkeypatch.setattr(lifecycle, "wait_ready", copy_arrives)
    no_socket_here(monkeypatch)
    result = lifecycle.start(ctx, s.id)
    assert result.status == SessionStatus.RUNNING
    assert [c.status for c in seen] == [SessionStatus.STARTING] and len(ctx.runtime.containers) == 1
