"""A launch whose start cannot be handed to a worker (the broker is unreachable or refuses) ends at once in
``error`` with a message a person can act on, and gives back the user's lock and the seat.

Real components only: the session store on the test's real Redis, a real ``CeleryDispatcher`` whose broker
is a closed loopback port, a Redis that refuses its password, or a Redis of its own that the test stops.
"""

from __future__ import annotations

import secrets
import time

import pytest
import redis

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.redis_store import SessionStore
from launcher.errors import RuntimeUnavailable
from launcher.models import Actor, Role, SessionStatus
from launcher.service import LauncherService
from launcher.settings import Settings
from tests.helpers import free_port, register_hosts
from tests.stack import start_redis

FAIL_WITHIN_S = 10  # kombu retries a publish a few times (under a second here); the console must not hang


@pytest.fixture
def settings(redis_url, unit_settings) -> Settings:
    # Caps of two: a leaked seat would refuse the relaunch.
    return unit_settings.model_copy(update={"redis_url": redis_url, "max_sessions": 2, "max_sessions_per_host": 2})


@pytest.fixture
def store(settings):
    store = SessionStore.from_settings(settings)
    register_hosts(store, settings.host_name)
    yield store
    keys = store.redis.keys(f"{settings.instance}:*") + store.redis.keys(f"{settings.instance}.*")
    if keys:
        store.redis.delete(*keys)


def broker_at(settings: Settings, url: str) -> CeleryDispatcher:
    """A real Celery dispatcher whose broker (and result backend) is ``url``; the store keeps the real Redis."""
    return CeleryDispatcher.from_settings(settings.model_copy(update={"redis_url": url}))


def live_ids(store: SessionStore, settings: Settings) -> tuple[set[str], set[str]]:
    """The ids of the live sessions, and of those holding a seat on host ``local``."""
    p = settings.instance
    return store.redis.smembers(f"{p}:live"), store.redis.smembers(f"{p}:host:local:live")


def assert_launch_fails_and_frees_everything(settings: Settings, store: SessionStore, dispatcher, user: str):
    service = LauncherService(settings, store, dispatcher)
    actor = Actor(name=user, role=Role.RESEARCHER)
    before = live_ids(store, settings)
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailable) as failed:
        service.launch(actor, "alpha_research")
    took = time.monotonic() - t0
    assert took < FAIL_WITHIN_S, f"the failed launch took {took:.1f} s"
    message = failed.value.user_message
    assert "task queue" in message and "try again" in message, message

    ended = store.latest_session_for(user)
    assert ended is not None and ended.status == SessionStatus.ERROR
    assert ended.error == message  # what the console shows the user
    assert store.live_session_for(user) is None  # no user lock
    assert live_ids(store, settings) == before  # no live session, no seat on the host
    assert ended.id not in store.redis.smembers(f"{settings.instance}:host:local:live")
    trail = [(e.action, e.previous) for e in reversed(store.audit(user=user)) if e.session_id == ended.id]
    assert trail == [("waiting", ""), ("queued", "waiting"), ("error", "queued")], trail
    assert store.audit(user=user)[0].reason

    # The lock and the seat are really free: the same user launches again once the queue answers.
    working = LauncherService(settings, store, CeleryDispatcher.from_settings(settings))
    again = working.launch(actor, "alpha_research")
    assert again.id != ended.id and store.live_session_for(user).id == again.id
    assert live_ids(store, settings)[1] == before[1] | {again.id}


def test_launch_with_the_broker_port_closed_ends_in_error_and_frees_the_lock_and_seat(settings, store):
    """With the broker on a closed loopback port, the launch raises RuntimeUnavailable within seconds, the
    session ends in error with that message, and no lock, live session or seat is left."""
    closed = f"redis://:{secrets.token_urlsafe(8)}@127.0.0.1:{free_port()}/0"
    assert_launch_fails_and_frees_everything(settings, store, broker_at(settings, closed), "nobroker-nina")


def test_launch_refused_by_the_broker_ends_in_error_and_frees_the_lock_and_seat(settings, store, redis_url):
    """With a broker that refuses the dispatcher's password, the launch raises RuntimeUnavailable, the session
    ends in error, and no lock, live session or seat is left."""
    hostport = redis_url.rsplit("@", 1)[1]
    refused = f"redis://:wrong-{secrets.token_urlsafe(8)}@{hostport}"
    assert_launch_fails_and_frees_everything(settings, store, broker_at(settings, refused), "refused-rita")


def test_launch_after_the_broker_stopped_ends_in_error_and_frees_the_lock_and_seat(settings, store, tmp_path):
    """A dispatcher that enqueued a start on its own Redis, which then stops: the next launch raises
    RuntimeUnavailable, ends in error, and leaves no lock, live session or seat."""
    proc, url = start_redis(tmp_path)
    try:
        dispatcher = broker_at(settings, url)
        fay = Actor(name="first-fay", role=Role.RESEARCHER)
        first = LauncherService(settings, store, dispatcher).launch(fay, "alpha_research")
        queue = settings.queue_for_host(first.host)
        assert redis.Redis.from_url(url).llen(queue) == 1  # the start really went to that broker
        proc.stop()
        assert not proc.alive()
        assert_launch_fails_and_frees_everything(settings, store, dispatcher, "stopped-stan")
    finally:
        proc.stop()
