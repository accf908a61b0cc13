"""Caps, double clicks, stop-all and a worker crash, with real containers."""

from __future__ import annotations

import threading

import pytest

from launcher.errors import Conflict, LimitReached
from launcher.models import Actor, SessionStatus
from launcher.service import LauncherService
from launcher.store import SessionStore
from tests.helpers import wait_for
from tests.stack import start_worker

pytestmark = pytest.mark.docker


def launch_all(service, actors, template="alpha_research"):
    barrier = threading.Barrier(len(actors))
    outcomes: dict[str, object] = {}

    def go(actor):
        barrier.wait()
        try:
            outcomes[actor.name] = service.launch(actor, template)
        except (LimitReached, Conflict) as exc:
            outcomes[actor.name] = exc

    threads = [threading.Thread(target=go, args=(a,)) for a in actors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_ten_users_at_once_with_cap_five(clean_stack):
    """Ten simultaneous launches with the cap at 5: five run in five containers, five are refused with the reason."""
    st = clean_stack
    assert st.settings.max_sessions == 5
    actors = [st.actor(f"cap-{i}") for i in range(10)]
    outcomes = launch_all(st.service, actors)
    started = [s for s in outcomes.values() if not isinstance(s, Exception)]
    refused = [e for e in outcomes.values() if isinstance(e, LimitReached)]
    assert len(started) == 5 and len(refused) == 5
    assert all("limit of 5 concurrent sessions" in e.user_message for e in refused)
    for s in started:
        ran = st.service.wait(Actor.operator(), s.id, {SessionStatus.RUNNING}, 180)
        assert ran.status == SessionStatus.RUNNING, ran.error
    assert len([c for c in st.containers() if c.status == "running"]) == 5

    task_id = st.service.stop_all(Actor.operator("cap-admin"))
    result = st.service.dispatcher.app.AsyncResult(task_id).get(timeout=120)
    assert result == {"done": 5, "total": 5}
    assert st.store.count_live() == 0
    wait_for(lambda: st.containers() == [], 30, "containers removed")
    reasons = {e.reason for e in st.store.audit(limit=200) if e.action == "stopped" and e.user.startswith("cap-")}
    assert reasons == {"admin"}


def test_double_launch_makes_one_container(clean_stack):
    """The same user clicking Launch twice at once gets one session and one container."""
    st = clean_stack
    dave = st.actor("double-dave")
    outcomes = launch_all(st.service, [dave, dave])
    assert len(outcomes) == 1  # same key: one of the two overwrote the other's outcome
    live = st.store.live_session_for("double-dave")
    assert live is not None
    st.service.wait(dave, live.id, {SessionStatus.RUNNING}, 120)
    assert len(st.containers(user="double-dave")) == 1
    with pytest.raises(Conflict):
        st.service.launch(dave, "alpha_research")
    assert len(st.containers(user="double-dave")) == 1


def test_worker_killed_mid_start_recovers_without_orphans(clean_stack):
    """A worker SIGKILLed during a start, then restarted: the session ends running (or error), no orphan."""
    st = clean_stack
    settings = st.settings.model_copy(update={"host_name": "crashhost", "hosts": ["crashhost"]})
    log = st.workdir / "crash-worker.log"
    worker = start_worker(settings, log, f"crash-{settings.instance}")
    try:
        service = LauncherService(settings, SessionStore.from_settings(settings), st.service.dispatcher)
        erin = st.actor("crash-erin")
        session = service.launch(erin, "alpha_research")
        assert session.host == "crashhost"
        wait_for(lambda: (s := st.store.get(session.id)) and s.container_id, 60, "the container to be created")
        worker.kill()
        assert st.store.get(session.id).status == SessionStatus.STARTING
        worker = start_worker(settings, log, f"crash-{settings.instance}")
        final = service.wait(erin, session.id, {SessionStatus.RUNNING}, 180)
        containers = st.containers(session=session.id)
        if final.status == SessionStatus.RUNNING:
            assert len(containers) == 1 and containers[0].status == "running"
        else:
            assert final.status == SessionStatus.ERROR and containers == []
        service.stop(erin)
        service.wait(erin, session.id, {SessionStatus.STOPPED}, 60)
        assert st.containers(session=session.id) == []
    finally:
        worker.stop()
