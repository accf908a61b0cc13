"""Attacks on a session's plumbing, from where the attacker sits: inside a notebook, or a host account
with the notebook's uid. Against real containers, nginx, the authorizer and the worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from launcher.models import SessionStatus
from launcher.spec import container_name
from tests.helpers import Kernel, wait_for
from tests.web import opened
from workers import hostfs

pytestmark = pytest.mark.docker

HIJACK = r"""
import errno, json, os, socket, threading
out = {}
def attempt(name, fn):
    try:
        fn(); out[name] = 'OK'
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt('unlink', lambda: os.unlink('/run/nb/jupyter.sock'))
attempt('rename', lambda: os.rename('/run/nb/jupyter.sock', '/run/nb/old.sock'))
attempt('symlink', lambda: os.symlink('/tmp/evil.sock', '/run/nb/evil.sock'))
attempt('chmod_dir', lambda: os.chmod('/run/nb', 0o777))
attempt('chmod_sock', lambda: os.chmod('/run/nb/jupyter.sock', 0o666))
def bind():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind('/run/nb/capture.sock')
attempt('bind', bind)
attempt('secret_read', lambda: open('/run/nbl/auth').read())
attempt('secret_write', lambda: open('/run/nbl/auth', 'w').write('x'))
attempt('server_memory', lambda: open(f'/proc/{os.getppid()}/environ').read())
attempt('list_run_nb', lambda: os.listdir('/run/nb'))
out['run_nbl'] = sorted(os.listdir('/run/nbl'))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def victim(stack):
    """Two running sessions: the attacker's (with a kernel) and a victim's."""
    stack.stop_everything()
    mallory, victor = stack.actor("pl-mallory"), stack.actor("pl-victor")
    sm = stack.service.wait(mallory, stack.service.launch(mallory, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    sv = stack.service.wait(victor, stack.service.launch(victor, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    assert sm.status == sv.status == SessionStatus.RUNNING
    client = opened(stack, sm.id, "pl-mallory")
    kernel = Kernel(client)
    yield stack, sm, sv, kernel
    kernel.close()
    client.close()
    stack.stop_everything()


def test_notebook_cannot_replace_redirect_or_read_its_plumbing(victim):
    """From a kernel: the socket cannot be removed, renamed, rebound, chmodded or shadowed, the secret
    file is gone and read-only, and the server's /proc files are closed to its own kernels."""
    st, sm, _, k = victim
    res = k.execute(HIJACK)
    assert res.error is None, res.error
    out = json.loads(res.stdout)
    assert out["unlink"] == out["rename"] == out["symlink"] == out["bind"] == "EACCES", out
    assert out["chmod_dir"] == "EPERM" and out["chmod_sock"] in ("EPERM", "EACCES"), out
    assert out["secret_read"] == "ENOENT" and out["secret_write"] in ("EROFS", "ENOENT"), out
    assert out["server_memory"] == "EACCES", out  # the server is non-dumpable
    assert out["list_run_nb"] == "EACCES" and out["run_nbl"] == [], out
    # The socket the entry point and the worker use is still the server's own: it answers.
    assert k.client.get("/api/status").status_code == 200
    sock = hostfs.socket_path(st.settings, sm.id)
    stat = os.lstat(sock)
    assert stat.st_uid == 0 and stat.st_gid == st.settings.proxy_gid and stat.st_mode & 0o777 == 0o660


HOST_PROBE = r"""
import json, os, socket, sys
args = json.load(sys.stdin)
found, opened = [], []
def read(path):
    try:
        with open(path, 'rb') as f:
            return f.read(1 << 20).decode(errors='replace')
    except OSError:
        return ''
for pid in filter(str.isdigit, os.listdir('/proc')):
    if int(pid) == os.getpid():
        continue
    for name in ('environ', 'cmdline', 'root/run/nbl/auth', 'root/proc/self/environ'):
        text = read(f'/proc/{pid}/{name}')
        found += [f'{pid}/{name}:secret' for s in args['secrets'] if s in text]
        found += [f'{pid}/{name}:sid' for s in args['sids'] if s in text and name == 'cmdline']
for sid in args['sids']:
    base = args['sessions'] + '/' + sid
    for path in (base + '/secret.root', base + '/secret/auth'):
        if read(path):
            opened.append(path)
    try:
        os.listdir(base); opened.append(base)
    except OSError:
        pass
    try:
        s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(base + '/sock/jupyter.sock')
        opened.append('socket ' + sid)
    except OSError:
        pass
workspaces = []
for user in args['users']:
    try:
        os.listdir(args['workspaces'] + '/' + user); workspaces.append(user)
    except OSError:
        pass
print(json.dumps({'found': found, 'opened': opened, 'workspaces': workspaces, 'uid': os.getuid()}))
"""


def _probe_as(uid: int, gid: int, args: dict) -> dict:
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", HOST_PROBE],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=drop,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["uid"] == uid
    return result


def test_host_accounts_reach_no_secret_socket_or_session_id(victim):
    """A host process, as an ordinary account or even as the notebook uid, finds no Jupyter secret in any
    /proc file or session folder, cannot connect to a session socket, and sees no session id in a
    process list; an ordinary account cannot list a workspace either."""
    st, sm, sv, _ = victim
    args = {
        "secrets": [st.store.get(s.id).token.get_secret_value() for s in (sm, sv)],
        "sids": [sm.id, sv.id],
        "users": ["pl-mallory", "pl-victor"],
        "sessions": str(st.settings.sessions_dir),
        "workspaces": str(st.settings.workspaces_dir),
    }
    ordinary = _probe_as(1000, 1000, args)
    assert ordinary == {"found": [], "opened": [], "workspaces": [], "uid": 1000}
    # The notebook uid is no login account (a worker refuses one that is), so no host process should
    # ever run as it; even one that does gets no secret and no socket. The workspaces are its files.
    as_notebook = _probe_as(st.settings.notebook_uid, st.settings.notebook_gid, args)
    assert as_notebook["found"] == [] and as_notebook["opened"] == [], as_notebook


def test_notebook_uid_that_is_a_login_account_is_refused(stack, tmp_path):
    """A worker refuses to start notebooks as a host login account (here root's uid), with a clear reason."""
    import pwd

    from workers.hostfs import check_notebook_identity, login_account_conflict

    accounts = pwd.getpwall()
    assert login_account_conflict(0, 0, accounts) is not None
    assert login_account_conflict(stack.settings.notebook_uid, stack.settings.notebook_gid, accounts) is None
    from launcher.errors import StartFailed

    with pytest.raises(StartFailed) as refused:
        check_notebook_identity(stack.settings.model_copy(update={"notebook_uid": 0}))
    assert "LAUNCHER_NOTEBOOK_UID" in refused.value.log_message


def test_notebook_that_hangs_its_own_server_costs_only_its_probe(victim):
    """A kernel that freezes its own Jupyter server (SIGSTOP on its parent, allowed to the same uid) cannot
    stall the host: the heartbeat finishes within its bound, still records the other session, and holds
    the hung one as not busy."""
    st, sm, sv, k = victim
    container = st.docker.containers.get(container_name(st.settings, sm.id))
    titles = container.top()["Titles"]
    [server] = [
        dict(zip(titles, p, strict=False))
        for p in container.top()["Processes"]
        if p[titles.index("CMD")].startswith("python3 -m jupyterlab")
    ]
    try:
        # A second later, so that this cell's own reply still gets out through the server.
        code = "import os, signal, threading\nthreading.Timer(1.0, os.kill, (os.getppid(), signal.SIGSTOP)).start()"
        assert k.execute(code).error is None
        stat = f"/proc/{server['PID']}/stat"
        wait_for(lambda: Path(stat).read_text().rsplit(")", 1)[1].split()[0] == "T", 10, "the server to be stopped")
        beat = st.service.dispatcher.app.send_task("workers.tasks.heartbeat", queue=st.settings.host_queue)
        counts = beat.get(timeout=120)  # bounded: the probe deadline, not the hung server, decides
        assert counts["running"] == 2 and counts["updated"] == 1 and counts["unreachable"] == 1, counts
        assert st.store.get(sm.id).kernels_busy == 0
        assert st.store.get(sv.id).status == SessionStatus.RUNNING
    finally:
        os.kill(int(server["PID"]), signal.SIGCONT)
