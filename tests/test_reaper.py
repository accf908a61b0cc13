"""Heartbeat, reaping and reconciliation with a real Beat, worker, Redis and containers.

This stack's timings are seconds (idle timeout 6 s, heartbeat and reap every second) so that
behaviour that takes hours in production is observable in a test.
"""

from __future__ import annotations

import threading
import time

import docker
import pytest

from launcher.models import Actor, SessionStatus
from launcher.spec import LABEL_PREFIX, container_name
from tests.helpers import Kernel, wait_for
from tests.stack import start_beat, start_stack
from tests.web import opened

pytestmark = pytest.mark.docker
IDLE = 6.0
RUNNING = {SessionStatus.RUNNING}
ENDED = {SessionStatus.STOPPED, SessionStatus.ERROR}
OP = Actor.operator("reaper-test")


@pytest.fixture(scope="module")
def rstack(workdir, redis_url):
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    st = start_stack(
        workdir / "reaper",
        redis_url,
        client,
        idle_timeout_s=IDLE,
        heartbeat_interval_s=1,
        reap_interval_s=1,
        reconcile_interval_s=3600,
        max_sessions=10,
        max_sessions_per_host=10,
    )
    beat = start_beat(st.settings, st.workdir, "beat")
    yield st
    beat.stop()
    st.stop_everything()
    st.shutdown()


def launch(st, user, template="alpha_research"):
    actor = st.actor(user)
    session = st.service.wait(actor, st.service.launch(actor, template).id, RUNNING, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    return session


def final_audit(st, session_id):
    return next(e for e in st.store.audit(limit=500) if e.session_id == session_id and e.action in ("stopped", "error"))


def test_idle_session_is_reaped_with_reason_idle(rstack):
    """A session nobody uses is stopped after the idle timeout (not before); the audit says idle."""
    s = launch(rstack, "idle-ivy")
    ended = rstack.service.wait(OP, s.id, ENDED, 60)
    assert ended.status == SessionStatus.STOPPED and ended.stop_reason == "idle"
    assert final_audit(rstack, s.id).reason == "idle"
    reaped_after = (ended.stopped_at - ended.last_activity_at).total_seconds()
    assert reaped_after >= IDLE  # never early; the figure is logged for the issue note
    print(f"\nreaped {reaped_after:.1f} s after the last activity (timeout {IDLE} s, reap interval 1 s)")
    assert rstack.containers(session=s.id) == []


def test_long_silent_cell_is_not_reaped(rstack):
    """A kernel busy in a cell that prints nothing (time.sleep) keeps the session alive past the timeout."""
    s = launch(rstack, "busy-bea")
    client = opened(rstack, s.id, "busy-bea")
    kernel = Kernel(client)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=kernel.execute("import time; time.sleep(3 * 6)", 120)))
    worker.start()
    time.sleep(IDLE * 2)  # well past the idle timeout while the cell runs
    current = rstack.store.get(s.id)
    assert current.status == SessionStatus.RUNNING and current.kernels_busy == 1
    worker.join()
    assert outcome["r"].status == "ok"
    kernel.close()
    client.close()
    ended = rstack.service.wait(OP, s.id, ENDED, 60)  # idle once the cell is done
    assert ended.stop_reason == "idle"
    assert (ended.stopped_at - s.started_at).total_seconds() > 3 * IDLE


def test_open_but_idle_tab_is_reaped(rstack):
    """A connected kernel WebSocket with no execution does not count as activity."""
    s = launch(rstack, "tab-tom")
    client = opened(rstack, s.id, "tab-tom")
    kernel = Kernel(client)
    try:
        ended = rstack.service.wait(OP, s.id, ENDED, 60)
        assert ended.stop_reason == "idle"
        assert rstack.store.get(s.id).connections >= 1  # the heartbeat saw the open connection
    finally:
        kernel.ws.close()
        client.close()


def test_killed_container_is_detected(rstack):
    """`docker kill` on a running notebook: the next heartbeat marks the session error/died."""
    s = launch(rstack, "killed-kim")
    rstack.docker.containers.get(container_name(rstack.settings, s.id)).kill()
    ended = rstack.service.wait(OP, s.id, ENDED, 30)
    assert ended.status == SessionStatus.ERROR and ended.stop_reason == "died"
    assert "exited unexpectedly" in ended.error
    # The end state is written first, the clean-up follows: the container goes a moment later.
    wait_for(lambda: rstack.containers(session=s.id) == [], 30, "the dead container to be removed")


def test_oom_killed_container_is_reported_as_oom(rstack):
    """A notebook whose server is killed by the memory limit is reported as OOM."""
    s = launch(rstack, "oom-olga")
    client = opened(rstack, s.id, "oom-olga")
    kernel = Kernel(client)
    # Make the Jupyter server the OOM killer's first choice, then allocate past the limit. (From the
    # host: the server is non-dumpable, so its own kernels cannot touch its /proc files.)
    container = rstack.docker.containers.get(container_name(rstack.settings, s.id))
    titles = container.top()["Titles"]
    procs = [dict(zip(titles, p, strict=False)) for p in container.top()["Processes"]]
    [server] = [p for p in procs if p["CMD"].startswith("python3 -m jupyterlab")]
    with open(f"/proc/{server['PID']}/oom_score_adj", "w") as f:
        f.write("1000")
    res = kernel.execute("b = b'x' * (1536 << 20)", timeout=120)
    assert res.kernel_died or res.error
    kernel.ws.close()
    client.close()
    ended = rstack.service.wait(OP, s.id, ENDED, 60)
    assert ended.status == SessionStatus.ERROR and ended.stop_reason == "oom", ended
    assert "ran out of memory" in ended.error


def test_redis_flush_then_reconcile_brings_sessions_back(rstack):
    """After Redis loses everything, reconcile adopts the running notebooks: same users, templates, secrets,
    and their owners open them again."""
    a = launch(rstack, "flush-ann", "alpha_research")
    b = launch(rstack, "flush-ben", "factor_analysis")
    secrets_before = {s.id: rstack.store.get(s.id).token.get_secret_value() for s in (a, b)}
    rstack.store.redis.flushall()
    assert rstack.store.get(a.id) is None
    result = rstack.service.dispatcher.app.send_task("workers.tasks.reconcile", queue=rstack.settings.host_queue).get(
        timeout=60
    )
    assert result["adopted"] == 2, result
    for before in (a, b):
        user = Actor(name=before.user, role="researcher")
        back = rstack.service.session_for(user)
        assert (back.id, back.user, back.template, back.status) == (
            before.id,
            before.user,
            before.template,
            SessionStatus.RUNNING,
        )
        assert rstack.store.get(before.id).token.get_secret_value() == secrets_before[before.id]
        client = opened(rstack, before.id, before.user)
        assert client.get("/api/status").status_code == 200
        client.close()
    assert {e.action for e in rstack.store.audit(limit=10)} == {"adopted"}
    assert rstack.store.count_live() == 2


def test_orphan_containers_are_removed(rstack):
    """A labelled container with no session, and one whose session has ended, are removed by reconcile."""
    st = rstack
    s = launch(st, "orphan-otto")
    st.service.stop(OP, "orphan-otto")
    st.service.wait(OP, s.id, ENDED, 60)
    labels = {f"{LABEL_PREFIX}.instance": st.settings.instance, f"{LABEL_PREFIX}.host": st.settings.host_name}
    stray = st.docker.containers.run(
        st.settings.notebook_image,
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        labels={**labels, f"{LABEL_PREFIX}.session": "zzzzzzzzzzzz"},
        name=f"{st.settings.instance}-nb-zzzzzzzzzzzz",
    )
    ended = st.docker.containers.run(
        st.settings.notebook_image,
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        labels={
            **labels,
            f"{LABEL_PREFIX}.session": s.id,
            f"{LABEL_PREFIX}.user": "orphan-otto",
            f"{LABEL_PREFIX}.template": "alpha_research",
        },
        name=container_name(st.settings, s.id),
    )
    result = st.service.dispatcher.app.send_task("workers.tasks.reconcile", queue=st.settings.host_queue).get(
        timeout=60
    )
    assert result["removed"] >= 2
    for c in (stray, ended):
        with pytest.raises(docker.errors.NotFound):
            st.docker.containers.get(c.id)
    wait_for(lambda: st.store.get(s.id).status == SessionStatus.STOPPED, 5, "the ended session to stay stopped")
