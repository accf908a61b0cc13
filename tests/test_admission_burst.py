"""A bounded burst against the admission queue (issue 11): 100 launch requests from 25 users within 10 s against
room for 5, on a real stack (Redis, a worker, Docker, Jupyter). It stops by itself: every session is stopped as
soon as it is seen running, so the queue drains through the five seats."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter

import docker
import pytest

from launcher.errors import Conflict, LauncherError, LimitReached
from launcher.models import Actor, Role, SessionStatus
from launcher.spec import container_name
from tests.helpers import wait_for
from tests.stack import Stack, start_stack

pytestmark = pytest.mark.docker
USERS = [f"burst-{i:02d}" for i in range(25)]
REQUESTS_PER_USER = 4
WINDOW_S = 10.0
ROOM = 5
ADMIN = Actor(name="burst-admin", role=Role.ADMIN)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url) -> Stack:
    st = start_stack(
        tmp_path_factory.mktemp("burst") / "stack",
        redis_url,
        docker.from_env(),
        max_sessions=ROOM,
        max_sessions_per_host=ROOM,
        worker_concurrency=8,
    )
    yield st
    st.stop_everything()
    st.shutdown()


def test_a_burst_of_launches_queues_fairly_and_every_one_runs(stack: Stack) -> None:
    rng = random.Random(11)
    plan = sorted((rng.uniform(0, WINDOW_S), user) for user in USERS for _ in range(REQUESTS_PER_USER))
    outcomes: list[tuple[str, str, str]] = []  # (user, outcome, session id or message)
    lock = threading.Lock()
    t0 = time.monotonic()

    def request(at: float, user: str) -> None:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        try:
            s = stack.service.launch(Actor(name=user, role=Role.RESEARCHER), "alpha_research")
            result = (user, "ok", s.id)
        except Conflict as exc:
            result = (user, "pending", exc.user_message)
        except LimitReached as exc:
            result = (user, "limit", exc.user_message)
        except Exception as exc:  # noqa: BLE001 - recorded, so the test shows it
            result = (user, "crash", repr(exc))
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=request, args=item) for item in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sent_within = time.monotonic() - t0
    print(f"\n100 requests answered within {sent_within:.1f} s")

    # Nothing lost, nothing duplicated: every request has one answer; each user got exactly one session.
    assert len(outcomes) == len(plan) == 100
    kinds = Counter(kind for _, kind, _ in outcomes)
    assert set(kinds) <= {"ok", "pending", "limit"}, [o for o in outcomes if o[1] not in ("ok", "pending", "limit")]
    accepted = {user: sid for user, kind, sid in outcomes if kind == "ok"}
    assert kinds["ok"] == len(accepted) == len(USERS)  # one per user, never two
    for user, kind, message in outcomes:
        if kind == "pending":
            assert "launch in progress" in message
        elif kind == "limit":
            assert "you may run 1 session" in message
    sessions = {sid: stack.store.get(sid) for sid in accepted.values()}
    tickets = sorted(sessions.values(), key=lambda s: s.ticket)
    assert len({s.ticket for s in tickets}) == len(USERS)

    # Drain: stop each session once it runs (after checking its container really runs); the rest are admitted.
    seen_running: set[str] = set()
    deadline = time.monotonic() + 400
    while len(seen_running) < len(USERS):
        assert time.monotonic() < deadline, f"only {len(seen_running)} of {len(USERS)} ran"
        live = stack.store.list_live()
        admitted = [s for s in live if s.status != SessionStatus.WAITING]
        assert len(admitted) <= ROOM
        pending_per_user = Counter(s.user for s in live if s.status in (SessionStatus.WAITING, SessionStatus.QUEUED,
                                                                         SessionStatus.STARTING))
        assert all(n <= 1 for n in pending_per_user.values())
        for s in admitted:
            if s.status == SessionStatus.RUNNING and s.id not in seen_running:
                container = stack.docker.containers.get(container_name(stack.settings, s.id))
                assert container.status == "running"
                seen_running.add(s.id)
                with contextlib.suppress(LauncherError):  # it may have ended meanwhile
                    stack.service.stop(ADMIN, session_id=s.id)
        failed = [(sid, cur.error) for sid in sessions if (cur := stack.store.get(sid)).status == SessionStatus.ERROR]
        assert not failed
        time.sleep(0.1)

    # Admissions happened in arrival order (the audit stream is the order Redis applied them in).
    admitted_order = [
        e.session_id
        for e in reversed(stack.store.audit(limit=5000))
        if e.session_id in sessions and e.action == "queued" and e.reason == "admitted"
    ]
    assert admitted_order == [s.id for s in tickets]
    waits = sorted(stack.store.recent_waits())
    print(f"admission waits: p50 {waits[len(waits) // 2]:.1f} s, max {waits[-1]:.1f} s")

    wait_for(lambda: stack.store.count_live() == 0, 120, "every session to end")
    assert all(stack.store.get(sid).status == SessionStatus.STOPPED for sid in sessions)
    wait_for(lambda: not stack.containers(), 60, "every container to be removed")
