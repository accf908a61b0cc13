"""Caps, double clicks, stop-all and a worker crash, with real containers."""

from __future__ import annotations

import threading

import pytest

from launcher.adapters.redis_store import SessionStore
from launcher.errors import Conflict, LimitReached
from launcher.models import Actor, Session, SessionStatus
from launcher.service import LauncherService
from launcher.spec import LABEL_PREFIX
from tests.helpers import wait_for
from tests.stack import start_worker

pytestmark = pytest.mark.docker


def launch_all(service, actors, template="alpha_research") -> list[tuple[str, object]]:
    """Every actor's launch started at the same moment, one thread each: (actor name, session or error) per
    thread, so two threads of the same actor each leave their own outcome."""
    barrier = threading.Barrier(len(actors))
    outcomes: list[tuple[str, object]] = []

    def go(actor):
        barrier.wait()
        try:
            outcome = service.launch(actor, template)
        except Exception as exc:  # kept, so that an unexpected error shows in the assertions
            outcome = exc
        outcomes.append((actor.name, outcome))

    threads = [threading.Thread(target=go, args=(a,)) for a in actors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(outcomes) == len(actors), outcomes
    return outcomes


def test_ten_users_at_once_with_cap_five(clean_stack):
    """Ten simultaneous launches with the cap at 5: five run in five containers, five wait in the queue in order;
    stop-all ends both (the waiting ones are cancelled)."""
    st = clean_stack
    assert st.settings.max_sessions == 5
    actors = [st.actor(f"cap-{i}") for i in range(10)]
    outcomes = [outcome for _, outcome in launch_all(st.service, actors)]
    assert all(isinstance(s, Session) for s in outcomes), outcomes
    started = [s for s in outcomes if s.status != SessionStatus.WAITING]
    waiting = [s for s in outcomes if s.status == SessionStatus.WAITING]
    assert len(started) == 5 and len(waiting) == 5, outcomes
    assert sorted(st.store.queue_position(w) for w in waiting) == [1, 2, 3, 4, 5]
    for s in started:
        ran = st.service.wait(Actor.operator(), s.id, {SessionStatus.RUNNING}, 180)
        assert ran.status == SessionStatus.RUNNING, ran.error
    assert len([c for c in st.containers() if c.status == "running"]) == 5

    admin = Actor.operator("cap-admin")
    batch = st.service.stop_all(admin)
    progress = wait_for(lambda: (p := st.service.stop_all_progress(admin, batch)).finished and p, 120, "stop-all")
    assert (progress.done, progress.total) == (10, 10)
    assert all(st.store.get(w.id).status == SessionStatus.STOPPED for w in waiting)  # cancelled, never admitted
    assert st.store.count_live() == 0
    wait_for(lambda: st.containers() == [], 30, "containers removed")
    reasons = {e.reason for e in st.store.audit(limit=200) if e.action == "stopped" and e.user.startswith("cap-")}
    assert reasons == {"admin"}


def test_double_launch_makes_one_container(clean_stack):
    """The same user clicking Launch twice at once: one click gets the session, the other a Conflict saying a launch
    is in progress; one container runs; once it runs, a third launch meets the per-user limit."""
    st = clean_stack
    dave = st.actor("double-dave")
    outcomes = [outcome for _, outcome in launch_all(st.service, [dave, dave])]
    sessions = [o for o in outcomes if isinstance(o, Session)]
    conflicts = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(sessions) == 1 and len(conflicts) == 1, outcomes
    [session] = sessions
    assert "already have a launch in progress" in conflicts[0].user_message
    live = st.store.live_session_for("double-dave")
    assert live is not None and live.id == session.id
    assert [s.user for s in st.store.list_live()].count("double-dave") == 1
    ran = st.service.wait(dave, session.id, {SessionStatus.RUNNING}, 120)
    assert ran.status == SessionStatus.RUNNING, ran.error
    [container] = st.containers(user="double-dave")
    assert container.status == "running" and container.labels[f"{LABEL_PREFIX}.session"] == session.id
    with pytest.raises(LimitReached, match="you may run 1 session"):
        st.service.launch(dave, "alpha_research")
    assert len(st.containers(user="double-dave")) == 1


def test_worker_killed_mid_start_recovers_without_orphans(clean_stack):
    """A worker SIGKILLed while its start waits for Jupyter, then restarted: the session ends running in exactly
    one container (the one created before the crash, adopted), with no orphan; then it stops cleanly."""
    st = clean_stack
    settings = st.settings.model_copy(update={"host_name": "crashhost"})
    log = st.workdir / "crash-worker.log"
    worker = start_worker(settings, log, f"crash-{settings.instance}")
    st.store.set_draining(st.settings.host_name, True)  # the launch goes to crashhost
    try:
        wait_for(lambda: (h := st.store.host("crashhost")) is not None and h.state.value == "up", 30, "crashhost")
        service = LauncherService(settings, SessionStore.from_settings(settings), st.service.dispatcher)
        erin = st.actor("crash-erin")
        session = service.launch(erin, "alpha_research")
        assert session.host == "crashhost"
        created = wait_for(lambda: (s := st.store.get(session.id)) and s.container_id, 60, "the container")
        worker.kill()
        assert st.store.get(session.id).status == SessionStatus.STARTING
        [before] = st.containers(session=session.id)
        assert before.id == created
        worker = start_worker(settings, log, f"crash-{settings.instance}")
        final = service.wait(erin, session.id, {SessionStatus.RUNNING}, 180)
        assert final.status == SessionStatus.RUNNING, (final.status, final.error)
        assert final.container_id == created
        [container] = st.containers(session=session.id)
        assert container.id == created and container.status == "running"
        assert [c.name for c in st.containers(user="crash-erin")] == [container.name]
        service.stop(erin)
        service.wait(erin, session.id, {SessionStatus.STOPPED}, 60)
        assert st.store.get(session.id).status == SessionStatus.STOPPED
        assert st.containers(session=session.id) == []
    finally:
        st.store.set_draining(st.settings.host_name, False)
        worker.stop()
