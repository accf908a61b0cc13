"""The core loop against real Redis, a real Celery worker, real Docker and nginx."""

from __future__ import annotations

import httpx
import pytest

from launcher.models import SessionStatus
from tests.helpers import Kernel, wait_for

pytestmark = pytest.mark.docker

RUNNING = {SessionStatus.RUNNING}


def test_launch_open_compute_stop(clean_stack):
    """A launch goes queued -> starting -> running, serves JupyterLab only with the token, runs 1+1, and stops."""
    st = clean_stack
    alice = st.actor("e2e-alice")
    session = st.service.launch(alice, "alpha_research")
    assert session.status == SessionStatus.QUEUED and session.host == "local"
    session = st.service.wait(alice, session.id, RUNNING, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    assert session.url == f"{st.base_url}/user/{session.id}/lab"
    token = session.token.get_secret_value()
    assert token not in session.url

    with_token = httpx.get(session.open_url(), timeout=30)
    assert with_token.status_code == 200 and "JupyterLab" in with_token.text
    without = httpx.get(session.url, timeout=30)
    assert without.status_code == 302 and "/login" in without.headers["location"]
    assert httpx.get(f"{st.base_url}/user/{session.id}/api/status", timeout=10).status_code == 403
    wrong = httpx.get(f"{st.base_url}/user/{session.id}/api/status", headers={"Authorization": "token nope"})
    assert wrong.status_code == 403

    kernel = Kernel(st.base_url, session.id, token)
    try:
        assert kernel.execute("1+1").result == "2"
    finally:
        kernel.close()

    [container] = st.containers(session=session.id)
    assert container.status == "running"

    st.service.stop(alice)
    stopped = st.service.wait(alice, session.id, {SessionStatus.STOPPED}, 60)
    assert stopped.status == SessionStatus.STOPPED and stopped.stop_reason == "user"
    assert st.containers(session=session.id) == []
    assert not (st.settings.sessions_dir / session.id).exists()
    assert httpx.get(session.open_url() or f"{session.url}?token={token}", timeout=10).status_code == 503

    actions = [e.action for e in reversed(st.store.audit(user="e2e-alice", limit=20)) if e.session_id == session.id]
    assert actions == ["queued", "starting", "running", "stopping", "stopped"]


def test_environment_mounts_and_template(clean_stack):
    """Inside the notebook: the env vars are set, the library imports, the data reads, the template is there."""
    st = clean_stack
    bob = st.actor("e2e-bob")
    session = st.service.wait(bob, st.service.launch(bob, "factor_analysis").id, RUNNING, 120)
    kernel = Kernel(st.base_url, session.id, session.token.get_secret_value())
    try:
        out = kernel.execute(
            "import os, research, json\n"
            "print(os.environ['DATA_PATH'], os.environ['USER_ID'], os.environ['PYTHONPATH'])\n"
            "print(sorted(os.listdir('/home/jovyan/work')))\n"
            "print(json.load(open('/data/MANIFEST.json'))['synthetic'])\n"
            "from datetime import date\n"
            "print(research.read_crsp_daily(date(2024,1,1), date(2024,1,31)).collect().height > 0)\n"
        )
        assert out.error is None, out.error
        lines = out.stdout.splitlines()
        assert lines[0] == "/data e2e-bob /opt/research"
        assert "factor_analysis.ipynb" in lines[1]
        assert lines[2:] == ["True", "True"]
    finally:
        kernel.close()
    assert (st.settings.workspaces_dir / "e2e-bob" / "factor_analysis.ipynb").is_file()


def test_secrets_stay_out_of_logs_and_views(clean_stack):
    """The token is in no log (worker, entry point), no public view, and not in another user's view."""
    st = clean_stack
    carol = st.actor("e2e-carol")
    session = st.service.wait(carol, st.service.launch(carol, "backtest_review").id, RUNNING, 120)
    token = session.token.get_secret_value()
    httpx.get(session.open_url(), timeout=30)
    httpx.get(f"{st.base_url}/user/{session.id}/lab?token={token}", timeout=30)
    admin_view = st.service.get(st.actor("e2e-admin", role="admin"), session.id)
    assert admin_view.open_url() is None
    assert token not in admin_view.model_dump_json()
    assert token not in str(session.public()) and token not in repr(session)
    logs = [st.worker.log, st.workdir / "nginx" / "access.log", st.workdir / "nginx" / "error.log"]
    for log in logs:
        if log.exists():
            assert token not in log.read_text(errors="replace"), f"token leaked into {log}"
    wait_for(lambda: st.worker.alive(), 1, "worker")
