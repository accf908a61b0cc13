"""Store logic: fast checks on fakeredis, concurrency checks on a real Redis."""

from __future__ import annotations

import threading

import fakeredis
import pytest
import redis

from launcher.adapters.redis_store import SessionStore
from launcher.errors import Conflict, LimitReached, NotFound
from launcher.models import SCHEMA_VERSION, Reason, Session, SessionStatus, new_session_id, new_token
from launcher.settings import Settings
from launcher.transitions import ActorKind, By, MarkRunning, MarkStarting, MarkStopped, RequestStop
from tests.stack import random_instance


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
    """A command from a status it does not apply to is refused and leaves the record as it was."""
    s = store.reserve(new("ann"), actor="ann")
    worker = By(ActorKind.WORKER, "h1")
    with pytest.raises(Conflict, match="is queued: MarkRunning does not apply"):
        store.apply(s.id, MarkRunning(by=worker, reason=Reason.READY, url="http://h/user/x/lab"))
    assert store.get(s.id).status == SessionStatus.QUEUED
    store.apply(s.id, MarkStarting(by=worker, reason=Reason.START, phase="x"))
    running = store.apply(s.id, MarkRunning(by=worker, reason=Reason.READY, url="http://h/user/x/lab"))
    assert running.status == SessionStatus.RUNNING and running.phase is None and running.url.endswith("/lab")
    assert running.token.get_secret_value() == s.token.get_secret_value()
    with pytest.raises(NotFound):
        store.apply("nosuchsession", RequestStop(by=By(ActorKind.USER, "x"), reason=Reason.USER))


def test_terminal_transition_frees_user_and_caps_and_expires(store):
    """Stopping frees the user lock, the global and host counts, keeps the record with a TTL."""
    s = store.reserve(new("ann"), actor="ann")
    store.apply(s.id, RequestStop(by=By(ActorKind.USER, "ann"), reason=Reason.USER))
    store.apply(s.id, MarkStopped(by=By(ActorKind.WORKER, "h1"), reason=Reason.USER))
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
    store.apply(s.id, RequestStop(by=By(ActorKind.ADMIN, "admin1"), reason=Reason.ADMIN))
    events = store.audit(user="ann")
    assert [(e.action, e.previous, e.actor, e.reason) for e in events] == [
        ("stopping", "queued", "admin:admin1", "admin"),
        ("queued", "", "ann", "launch"),
    ]


def test_stored_record_has_schema_version_and_token_only_in_storage(store):
    """The JSON in Redis carries the schema version; public views never carry the token."""
    s = store.reserve(new("ann"), actor="ann")
    raw = store.redis.get(f"unit:session:{s.id}")
    assert f'"schema_version":{SCHEMA_VERSION}' in raw.replace(" ", "")
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
    """Twenty threads (ten users, each clicking twice) reserving at once on a real Redis with a cap of 5:
    exactly five users win, every other attempt is refused with the cap or the user's own live session."""
    settings = Settings(instance=random_instance(), redis_url=redis_url, max_sessions=5, max_sessions_per_host=5)
    store = SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    users = [f"user{i}" for i in range(10)]
    attempts = [user for user in users for _ in range(2)]
    results = race(store, attempts)

    assert len(results) == len(attempts) == 20
    outcomes = [outcome for _, outcome in results]
    assert set(outcomes) <= {"ok", "limit", "conflict"}, outcomes
    assert outcomes.count("ok") == 5 and outcomes.count("limit") + outcomes.count("conflict") == 15
    winners = [user for user, outcome in results if outcome == "ok"]
    assert len(set(winners)) == 5  # never the same user twice
    assert store.count_live() == 5
    assert sorted(s.user for s in store.list_live()) == sorted(winners)


def test_per_host_cap_holds_under_concurrency_with_two_hosts(redis_url):
    """Forty users reserving at once on a real Redis, two hosts with a cap of 4 each (one already holding 3)
    and a global cap of 100: each host ends with exactly 4, the totals add up, the rest are refused per host."""
    settings = Settings(
        instance=random_instance(), redis_url=redis_url, hosts="h1,h2", max_sessions=100, max_sessions_per_host=4
    )
    store = SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    for user in ("early0", "early1", "early2"):  # h1 is the only host with room, least loaded, then h2
        store._settings = settings.model_copy(update={"hosts": ["h1"]})
        assert store.reserve(new(user), actor=user).host == "h1"
    store._settings = settings

    results = race(store, [f"racer{i}" for i in range(40)])

    assert len(results) == 40
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count("ok") == 5 and outcomes.count("host_limit") == 35, outcomes
    per_host = {h: store.list_live(h) for h in ("h1", "h2")}
    assert {h: len(live) for h, live in per_host.items()} == {"h1": 4, "h2": 4}
    for host, live in per_host.items():
        assert all(s.host == host for s in live)  # the record agrees with the host's set
        assert store.redis.scard(f"{settings.instance}:host:{host}:live") == 4
    assert store.count_live() == 8 == sum(len(live) for live in per_host.values())
    winners = {user for user, outcome in results if outcome == "ok"}
    assert {s.user for live in per_host.values() for s in live} == winners | {"early0", "early1", "early2"}
    for user, outcome in results:
        assert (store.live_session_for(user) is not None) == (outcome == "ok"), user


def race(store: SessionStore, users: list[str]) -> list[tuple[str, str]]:
    """Every user's reservation started at the same moment, one thread each: (user, outcome) per thread."""
    barrier = threading.Barrier(len(users))
    results: list[tuple[str, str]] = []

    def attempt(user: str) -> None:
        barrier.wait()
        try:
            store.reserve(new(user), actor=user)
            outcome = "ok"
        except LimitReached as exc:
            outcome = "host_limit" if "every Docker host" in exc.user_message else "limit"
        except Conflict:
            outcome = "conflict"
        except Exception as exc:  # recorded, so that the test shows it instead of losing the thread
            outcome = repr(exc)
        results.append((user, outcome))

    threads = [threading.Thread(target=attempt, args=(user,)) for user in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results
