"""An open JupyterLab tab polls the server's API; that polling is not activity, and the session is still reaped.

A real stack with an idle timeout of seconds (entry point, worker, Beat, a notebook container) and a client
that went through the open flow, polling through the entry point as JupyterLab's tab does.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from launcher.models import Actor, SessionStatus
from tests.stack import start_beat, start_stack
from tests.web import opened

pytestmark = pytest.mark.docker
IDLE = 8.0
POLL_EVERY = 0.5
ENDED = {SessionStatus.STOPPED, SessionStatus.ERROR}
OP = Actor.operator("idle-tab-test")
# What an open JupyterLab tab keeps asking for: the file browser's refresh, the running sessions, kernels and
# terminals, the server's status.
POLLED = ("/api/contents?content=1", "/api/status", "/api/sessions", "/api/kernels", "/api/terminals")


@pytest.fixture(scope="module")
def tstack(workdir, redis_url):
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    st = start_stack(
        workdir / "idle-tab",
        redis_url,
        client,
        idle_timeout_s=IDLE,
        heartbeat_interval_s=1,
        reap_interval_s=1,
        reconcile_interval_s=3600,
    )
    beat = start_beat(st.settings, st.workdir, "beat")
    yield st
    beat.stop()
    st.stop_everything()
    st.shutdown()


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_tab_polling_the_api_is_reaped_as_idle(tstack):
    """A client polling /api/contents, /api/status, /api/sessions and /api/kernels through the entry point every
    half second, which Jupyter itself counts as activity, does not keep the session: it is reaped with reason
    idle while the polling goes on."""
    st = tstack
    actor = st.actor("poll-pat")
    session = st.service.wait(actor, st.service.launch(actor, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    tab = opened(st, session.id, "poll-pat")
    answered: list[tuple[datetime, str]] = []  # (when, the server's own last_activity) per answered round
    refused: list[tuple[datetime, dict[str, int]]] = []  # rounds with any other answer
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            codes = {path: tab.get(path) for path in POLLED}
            if all(r.status_code == 200 for r in codes.values()):
                answered.append((datetime.now(UTC), codes["/api/status"].json()["last_activity"]))
            else:
                refused.append((datetime.now(UTC), {p: r.status_code for p, r in codes.items()}))
                if len(refused) > 3:
                    return  # the session is gone: the tab would show the refusal page
            time.sleep(POLL_EVERY)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        ended = st.service.wait(OP, session.id, ENDED, 90)
    finally:
        done.set()
        poller.join(30)
        tab.close()

    assert ended.status == SessionStatus.STOPPED and ended.stop_reason == "idle", (ended.status, ended.stop_reason)
    final = next(e for e in st.store.audit(user="poll-pat", limit=50) if e.session_id == session.id)
    assert (final.action, final.reason) == ("stopped", "idle")
    assert answered, refused[:3]
    first_poll, last_poll = answered[0][0], answered[-1][0]
    assert all(when > last_poll for when, _ in refused), refused[:3]  # answered without a gap until the stop
    # The tab polled for most of the idle window, up to the reaping...
    assert (last_poll - first_poll).total_seconds() > IDLE / 2, (first_poll, last_poll)
    assert (ended.stopped_at - last_poll).total_seconds() < 10, (last_poll, ended.stopped_at)
    # ...and Jupyter counted that polling as activity (its server-wide last_activity moved along with it)...
    server_first, server_last = _when(answered[0][1]), _when(answered[-1][1])
    assert (server_last - server_first).total_seconds() > IDLE / 2 - 1, (server_first, server_last)
    # ...while the launcher's record of activity never moved past the first poll, and the session was reaped.
    assert ended.last_activity_at <= first_poll, (ended.last_activity_at, first_poll)
    assert (ended.stopped_at - ended.last_activity_at).total_seconds() >= IDLE
    assert st.containers(session=session.id) == []
