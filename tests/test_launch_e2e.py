"""The core loop against real Redis, a real Celery worker, real Docker and the real entry point."""

from __future__ import annotations

import pytest

from launcher.errors import PermissionDenied
from launcher.models import Role, SessionStatus
from tests.helpers import Kernel, wait_for
from tests.web import OriginClient, make_login, opened

pytestmark = pytest.mark.docker

RUNNING = {SessionStatus.RUNNING}


def test_launch_open_compute_stop(clean_stack):
    """A launch goes queued -> starting -> running, opens only through the open flow, runs 1+1, and stops."""
    st = clean_stack
    alice = st.actor("e2e-alice")
    session = st.service.launch(alice, "alpha_research")
    assert session.status == SessionStatus.QUEUED and session.host == "local"
    session = st.service.wait(alice, session.id, RUNNING, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    assert session.url == st.settings.session_origin(session.id)
    assert session.open_url() == f"{session.url}/_nbl/start"

    anonymous = OriginClient(st.settings, session.id)
    first = anonymous.get("/lab")
    assert first.status_code == 302 and first.headers["location"] == "/_nbl/start", first.headers
    assert anonymous.get("/api/status").status_code == 302

    client = opened(st, session.id, "e2e-alice")
    lab = client.get("/lab/tree/alpha_research.ipynb")
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert client.get("/api/status").status_code == 200

    kernel = Kernel(client)
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
    after = client.get("/lab")  # within the authorizer's cache (<= 1 s) the server is already gone: 503
    assert after.status_code in (403, 503) and "Back to the console" in after.text
    wait_for(lambda: client.get("/lab").status_code == 403, 2, "the refusal page")
    client.close()
    anonymous.close()

    actions = [e.action for e in reversed(st.store.audit(user="e2e-alice", limit=20)) if e.session_id == session.id]
    assert actions == ["waiting", "queued", "starting", "provenance", "running", "stopping", "stopped"]


def test_environment_mounts_and_template(clean_stack):
    """Inside the notebook: the env vars are set, the library imports, the data reads, the template is there."""
    st = clean_stack
    bob = st.actor("e2e-bob")
    session = st.service.wait(bob, st.service.launch(bob, "factor_analysis").id, RUNNING, 120)
    client = opened(st, session.id, "e2e-bob")
    kernel = Kernel(client)
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
        client.close()
    assert (st.settings.workspaces_dir / "e2e-bob" / "factor_analysis.ipynb").is_file()


def test_secrets_stay_out_of_logs_pages_and_views(clean_stack):
    """The Jupyter secret is in no log (the worker's, nginx's access and error logs, the entry point's output,
    the container's), no page JupyterLab serves, no service view of the owner or an admin (another researcher
    is refused any view), no open URL, and not in the container's environment or command line."""
    st = clean_stack
    carol = st.actor("e2e-carol")
    session = st.service.wait(carol, st.service.launch(carol, "backtest_review").id, RUNNING, 120)
    secret = st.store.get(session.id).token.get_secret_value()
    client = opened(st, session.id, "e2e-carol")
    pages = [client.get(path) for path in ("/lab", "/lab/tree/backtest_review.ipynb", "/api/status", "/api/me")]
    assert all(p.status_code == 200 for p in pages), [p.status_code for p in pages]
    for page in pages:
        assert secret not in page.text and secret not in str(page.headers)
    assert '"token": ""' in pages[0].text  # JupyterLab's page config carries no token
    with pytest.raises(PermissionDenied) as refused:  # another researcher gets no view at all
        st.service.get(st.actor("e2e-dave"), session.id)
    assert secret not in str(refused.value) and secret not in refused.value.log_message
    for viewer in (carol, st.actor("e2e-admin", role=Role.ADMIN)):
        view = st.service.get(viewer, session.id)
        assert secret not in view.model_dump_json() and secret not in (view.open_url() or "")
        assert secret not in str(view.public()) and secret not in repr(view)
    nginx = st.workdir / "nginx"
    logs = [st.worker.log, nginx / "access.log", nginx / "error.log", st.workdir / "nginx.out"]
    for log in logs:
        assert log.exists(), log
        assert secret not in log.read_text(errors="replace"), f"secret leaked into {log}"
    [container] = st.containers(session=session.id)
    assert secret not in container.logs().decode(errors="replace")
    assert not any(secret in e for e in container.attrs["Config"]["Env"])
    assert secret not in " ".join(container.attrs["Config"]["Cmd"])
    client.close()


def test_open_code_is_single_use_and_bound_to_the_browser(clean_stack):
    """A replayed code fails; a code minted for one browser's state does not log another browser in."""
    st = clean_stack
    erin = st.actor("e2e-erin")
    session = st.service.wait(erin, st.service.launch(erin, "alpha_research").id, RUNNING, 120)
    login = make_login(st.store.redis, st.settings, "e2e-erin")
    from launcher.adapters.redis_webauth import EntryAuth

    auth = EntryAuth(st.store.redis, st.settings)
    browser = OriginClient(st.settings, session.id)
    url = auth.issue_code(login_id=login, actor=erin, session_id=session.id, state=browser.start())
    assert browser.callback(url).status_code == 303
    assert browser.get("/api/status").status_code == 200
    replay = OriginClient(st.settings, session.id)
    replay.cookies.update({k: v for k, v in browser.cookies.items() if k == "__Host-nbl-state"})
    assert replay.callback(url).status_code == 403  # spent

    victim = OriginClient(st.settings, session.id)
    victim.start()  # the victim's browser holds its own state
    attacker = OriginClient(st.settings, session.id)
    minted = auth.issue_code(login_id=login, actor=erin, session_id=session.id, state=attacker.start())
    refused = victim.callback(minted)  # the attacker sends the victim a link with its code
    assert refused.status_code == 403 and "another browser" in refused.text
    assert "__Host-nbl" not in victim.cookies
    for c in (browser, replay, victim, attacker):
        c.close()
