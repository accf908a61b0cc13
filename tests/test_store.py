"""Store logic: fast checks on fakeredis, concurrency checks on a real Redis."""

from __future__ import annotations

import threading

import fakeredis
import pytest
import redis

from launcher.errors import Conflict, LimitReached, NotFound
from launcher.models import Session, SessionStatus, new_session_id, new_token
from launcher.settings import Settings
from launcher.store import SessionStore


def new(user: str, template: str = "alpha_research") -> Session:
    return Session(id=new_session_id(), user=user, template=template, token=new_token())


@pytest.fixture
def store() -> SessionStore:
    settings = Settings(
        instance="unit", hosts="h1,h2", max_sessions=3, max_sessions_per_host=2, session_record_ttl_s=600
    )
    return SessionStore(fakeredis.FakeRedis(decode_responses=True), settings)


def test_reserve_places_on_least_loaded_host_and_enforces_caps(store):
    """Sessions spread over hosts; the global cap refuses the fourth with the count."""
    hosts = [store.reserve(new(u), actor=u).host for u in ("a", "b", "c")]
    assert sorted(hosts) == ["h1", "h1", "h2"] or sorted(hosts) == ["h1", "h2", "h2"]
    with pytest.raises(LimitReached, match="limit of 3 concurrent sessions \\(3 running\\)"):
        store.reserve(new("d"), actor="d")
    assert store.live_session_for("d") is None and store.count_live() == 3


def test_per_host_cap(store):
    """When every host is full the refusal says so, even below the global cap."""
    store._settings = store._settings.model_copy(update={"max_sessions": 10, "max_sessions_per_host": 1})
    store.reserve(new("a"), actor="a")
    store.reserve(new("b"), actor="b")
    with pytest.raises(LimitReached, match="every Docker host"):
        store.reserve(new("c"), actor="c")


def test_one_live_session_per_user(store):
    """A second reservation for a user with a live session is a Conflict and changes nothing."""
    first = store.reserve(new("ann"), actor="ann")
    with pytest.raises(Conflict, match="already has a live notebook session"):
        store.reserve(new("ann"), actor="ann")
    assert store.live_session_for("ann").id == first.id and store.count_live() == 1


def test_transition_is_compare_and_set(store):
    """A transition from a status not allowed is refused and leaves the record as it was."""
    s = store.reserve(new("ann"), actor="ann")
    with pytest.raises(Conflict, match="is queued; cannot running"):
        store.transition(s.id, SessionStatus.RUNNING, actor="w")
    assert store.get(s.id).status == SessionStatus.QUEUED
    store.transition(s.id, SessionStatus.STARTING, actor="w", phase="x")
    running = store.transition(s.id, SessionStatus.RUNNING, actor="w", url="http://h/user/x/lab", phase=None)
    assert running.status == SessionStatus.RUNNING and running.phase is None and running.url.endswith("/lab")
    assert running.token.get_secret_value() == s.token.get_secret_value()
    with pytest.raises(NotFound):
        store.transition("nosuchsession", SessionStatus.STOPPING, actor="x")


def test_terminal_transition_frees_user_and_caps_and_expires(store):
    """Stopping frees the user lock, the global and host counts, keeps the record with a TTL."""
    s = store.reserve(new("ann"), actor="ann")
    store.transition(s.id, SessionStatus.STOPPING, actor="ann", reason="user")
    store.transition(s.id, SessionStatus.STOPPED, actor="w", reason="user")
    assert store.live_session_for("ann") is None
    assert store.latest_session_for("ann").status == SessionStatus.STOPPED
    assert store.count_live() == 0 and store.list_live("h1") == store.list_live("h2") == []
    assert 0 < store.redis.ttl(f"unit:session:{s.id}") <= 600
    again = store.reserve(new("ann"), actor="ann")
    assert again.id != s.id


def test_audit_records_each_transition(store):
    """Each transition appends who, what, from, why; filters by user, newest first."""
    s = store.reserve(new("ann"), actor="ann")
    store.reserve(new("bob"), actor="bob")
    store.transition(s.id, SessionStatus.STOPPING, actor="admin1", reason="admin")
    events = store.audit(user="ann")
    assert [(e.action, e.previous, e.actor, e.reason) for e in events] == [
        ("stopping", "queued", "admin1", "admin"),
        ("queued", "", "ann", "launch"),
    ]


def test_stored_record_has_schema_version_and_token_only_in_storage(store):
    """The JSON in Redis carries the schema version; public views never carry the token."""
    s = store.reserve(new("ann"), actor="ann")
    raw = store.redis.get(f"unit:session:{s.id}")
    assert '"schema_version":1' in raw.replace(" ", "")
    assert s.token.get_secret_value() in raw
    assert s.token.get_secret_value() not in str(s.public()) and "token" not in s.public()


def test_queue_position(store):
    """Queued sessions on a host are numbered by creation order."""
    store._settings = store._settings.model_copy(
        update={"hosts": ["h1"], "max_sessions_per_host": 5, "max_sessions": 5}
    )
    a = store.reserve(new("a"), actor="a")
    b = store.reserve(new("b"), actor="b")
    assert store.queue_position(a) == 1 and store.queue_position(store.get(b.id)) == 2


def test_caps_hold_under_concurrency_on_real_redis(redis_url):
    """Ten threads reserving at once against a real Redis with a cap of 5: exactly five win."""
    settings = Settings(instance="conc", redis_url=redis_url, max_sessions=5, max_sessions_per_host=5)
    store = SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    store.redis.delete(*store.redis.keys("conc:*") or ["none"])
    barrier = threading.Barrier(20)
    results: list[str] = []

    def attempt(user: str) -> None:
        barrier.wait()
        try:
            store.reserve(new(user), actor=user)
            results.append("ok")
        except LimitReached:
            results.append("limit")
        except Conflict:
            results.append("conflict")

    # 10 distinct users, each clicking twice at the same moment.
    threads = [threading.Thread(target=attempt, args=(f"user{i % 10}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 5
    assert store.count_live() == 5
    assert len({s.user for s in store.list_live()}) == 5
