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
from tests.helpers import register_hosts
from tests.stack import random_instance

GIB = 2**30


def new(user: str, template: str = "alpha_research", *, cpus: float = 2.0, mem_gib: float = 4, name: str = "") -> Session:
    return Session(
        id=new_session_id(), user=user, template=template, token=new_token(), cpus=cpus, mem_bytes=int(mem_gib * GIB),
        name=name or template,
    )


@pytest.fixture
def store() -> SessionStore:
    settings = Settings(instance="unit", max_sessions=3, max_sessions_per_host=2, session_record_ttl_s=600)
    store = SessionStore(fakeredis.FakeRedis(decode_responses=True), settings)
    register_hosts(store, "h1", "h2")
    return store


def test_reserve_places_on_least_loaded_host_and_enforces_caps(store):
    """Sessions spread over hosts; the global cap refuses the fourth (without the queue)."""
    hosts = [store.reserve(new(u), actor=u).host for u in ("a", "b", "c")]
    assert sorted(hosts) == ["h1", "h1", "h2"] or sorted(hosts) == ["h1", "h2", "h2"]
    with pytest.raises(LimitReached, match="limit of 3 concurrent sessions"):
        store.reserve(new("d"), actor="d")
    assert store.live_session_for("d") is None and store.count_live() == 3


def test_per_host_cap(store):
    """When every host is full the refusal says so, even below the global cap."""
    store._settings = store._settings.model_copy(update={"max_sessions": 10})
    register_hosts(store, "h1", "h2", max_sessions=1)
    store.reserve(new("a"), actor="a")
    store.reserve(new("b"), actor="b")
    with pytest.raises(LimitReached, match="no Docker host has room"):
        store.reserve(new("c"), actor="c")


def test_one_launch_in_progress_per_user(store):
    """A second launch while the first is still starting is a Conflict and changes nothing."""
    first = store.reserve(new("ann"), actor="ann")
    with pytest.raises(Conflict, match="already have a launch in progress"):
        store.reserve(new("ann", name="other"), actor="ann")
    assert store.live_session_for("ann").id == first.id and store.count_live() == 1


def test_named_sessions_up_to_the_per_user_limit(store):
    """With a limit of 2 a user runs two sessions of different names; a third, or a name in use, is refused."""
    store._settings = store._settings.model_copy(update={"max_sessions_per_user": 2, "max_sessions": 10})
    worker = By(ActorKind.WORKER, "h1")
    a = store.reserve(new("ann", name="alpha"), actor="ann")
    store.apply(a.id, MarkStarting(by=worker, reason=Reason.START))
    store.apply(a.id, MarkRunning(by=worker, reason=Reason.READY, url="u"))
    with pytest.raises(Conflict, match="live session named 'alpha'"):
        store.reserve(new("ann", name="alpha"), actor="ann")
    b = store.reserve(new("ann", name="beta"), actor="ann")
    store.apply(b.id, MarkStarting(by=worker, reason=Reason.START))
    store.apply(b.id, MarkRunning(by=worker, reason=Reason.READY, url="u"))
    with pytest.raises(LimitReached, match="you may run 2 sessions at once"):
        store.reserve(new("ann", name="gamma"), actor="ann")
    assert {s.label for s in store.live_sessions_for("ann")} == {"alpha", "beta"}


def test_resources_decide_placement_and_are_given_back(store):
    """A host with no room for a profile gets none of it; what a session reserved returns when it ends."""
    store._settings = store._settings.model_copy(update={"max_sessions": 10})
    register_hosts(store, "h1", cpus=4, mem_gib=8, max_sessions=10)
    register_hosts(store, "h2", cpus=16, mem_gib=64, max_sessions=10)
    big = store.reserve(new("a", cpus=8, mem_gib=32), actor="a")
    assert big.host == "h2"  # h1 could never hold it
    small = [store.reserve(new(u, cpus=2, mem_gib=4), actor=u) for u in ("b", "c")]
    h2 = store.host("h2")
    assert h2.used_cpus == 8 + 2 * sum(s.host == "h2" for s in small)
    ended = store.apply(big.id, RequestStop(by=By(ActorKind.USER, "a"), reason=Reason.USER))
    store.apply(ended.id, MarkStopped(by=By(ActorKind.WORKER, "h2"), reason=Reason.USER))
    assert store.host("h2").used_cpus == 2 * sum(s.host == "h2" for s in small)
    store.recount_host("h2")  # the recount agrees with the counters
    assert store.host("h2").used_cpus == 2 * sum(s.host == "h2" for s in small)
    with pytest.raises(LimitReached, match="no Docker host is large enough"):
        store.reserve(new("d", cpus=32, mem_gib=8), actor="d")


def test_launches_wait_in_order_and_are_admitted_as_room_frees(store):
    """Beyond the room, launches wait in arrival order; a stop admits the head; a cancel leaves the order."""
    store._settings = store._settings.model_copy(update={"max_sessions": 2})
    a, _ = store.launch(new("a"), actor="a")
    b, _ = store.launch(new("b"), actor="b")
    waiting = [store.launch(new(u), actor=u)[0] for u in ("c", "d", "e")]
    assert a.status == b.status == SessionStatus.QUEUED
    assert [w.status for w in waiting] == [SessionStatus.WAITING] * 3 and all(w.host is None for w in waiting)
    assert [store.queue_position(w) for w in waiting] == [1, 2, 3]
    with pytest.raises(LimitReached, match="others are already waiting"):
        store.launch(new("f"), actor="f", queue=False)
    with pytest.raises(Conflict, match="launch in progress"):
        store.launch(new("c", name="again"), actor="c")
    # d cancels: c and e keep their order
    from launcher.transitions import Cancel

    store.apply(waiting[1].id, Cancel(by=By(ActorKind.USER, "d"), reason=Reason.USER))
    assert [s.user for s in store.waiting()] == ["c", "e"]
    assert store.admit() == []  # no room yet
    store.apply(a.id, RequestStop(by=By(ActorKind.USER, "a"), reason=Reason.USER))
    store.apply(a.id, MarkStopped(by=By(ActorKind.WORKER, a.host), reason=Reason.USER))
    admitted = store.admit()
    assert [s.user for s in admitted] == ["c"] and admitted[0].status == SessionStatus.QUEUED
    assert [s.user for s in store.waiting()] == ["e"] and store.queue_position(store.get(waiting[2].id)) == 1
    events = [e for e in store.audit(user="c")]
    assert [(e.action, e.previous, e.reason) for e in events][:2] == [
        ("queued", "waiting", "admitted"),
        ("waiting", "", "launch"),
    ]
    assert store.queue_stats()["depth"] == 1 and store.recent_waits()


def test_down_and_drained_hosts_get_no_launch(store):
    """A host that stopped announcing itself, or that an admin drains, is skipped; undrained, it is used again."""
    store._settings = store._settings.model_copy(update={"max_sessions": 10, "host_down_after_s": 30})
    store.redis.zadd("unit:hosts", {"h1": 1})  # last seen in 1970
    assert {h.name: h.state.value for h in store.hosts()} == {"h1": "down", "h2": "up"}
    store.set_draining("h2", True)
    first, _ = store.launch(new("a"), actor="a")
    assert first.status == SessionStatus.WAITING
    store.set_draining("h2", False)
    assert [s.id for s in store.admit()] == [first.id] and store.get(first.id).host == "h2"
    with pytest.raises(NotFound):
        store.set_draining("nosuchhost", True)


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
        ("queued", "waiting", "launcher", "admitted"),
        ("waiting", "", "ann", "launch"),
    ]


def test_stored_record_has_schema_version_and_token_only_in_storage(store):
    """The JSON in Redis carries the schema version; public views never carry the token."""
    s = store.reserve(new("ann"), actor="ann")
    raw = store.redis.get(f"unit:session:{s.id}")
    assert f'"schema_version":{SCHEMA_VERSION}' in raw.replace(" ", "")
    assert s.token.get_secret_value() in raw
    assert s.token.get_secret_value() not in str(s.public()) and "token" not in s.public()


def test_caps_hold_under_concurrency_on_real_redis(redis_url):
    """Twenty threads (ten users, each clicking twice) reserving at once on a real Redis with a cap of 5:
    exactly five users win, every other attempt is refused with the cap or the user's own live session."""
    settings = Settings(instance=random_instance(), redis_url=redis_url, max_sessions=5, max_sessions_per_host=5)
    store = SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    register_hosts(store, "local")
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
    settings = Settings(instance=random_instance(), redis_url=redis_url, max_sessions=100, max_sessions_per_host=4)
    store = SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    register_hosts(store, "h1")
    for user in ("early0", "early1", "early2"):  # h1 is the only host, then h2 joins
        assert store.reserve(new(user), actor=user).host == "h1"
    register_hosts(store, "h2")

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
            outcome = "host_limit" if "no Docker host has room" in exc.user_message else "limit"
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
