"""Escape attempts from inside a real kernel in a real notebook container.

Network checks never send a packet off this machine: a UDP ``connect()`` only looks up a route,
and TCP connects target this machine's own addresses (the Docker bridge, loopback).
"""

from __future__ import annotations

import subprocess

import pytest

from launcher.models import SessionStatus
from tests.helpers import Kernel, wait_for
from tests.web import opened

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def two_sessions(stack):
    """Two users' running sessions, with a kernel open in the first."""
    stack.stop_everything()
    a, b = stack.actor("iso-a"), stack.actor("iso-b")
    sa = stack.service.launch(a, "alpha_research")
    sb = stack.service.launch(b, "alpha_research")
    sa = stack.service.wait(a, sa.id, {SessionStatus.RUNNING}, 120)
    sb = stack.service.wait(b, sb.id, {SessionStatus.RUNNING}, 120)
    assert sa.status == sb.status == SessionStatus.RUNNING
    (stack.settings.workspaces_dir / "iso-b" / "secret-of-b.txt").write_text("b's private notes")
    client = opened(stack, sa.id, "iso-a")
    kernel = Kernel(client)
    yield stack, sa, sb, kernel
    kernel.close()
    client.close()
    stack.stop_everything()


def host_addresses() -> list[str]:
    """This machine's own non-loopback IPv4 addresses (the Docker bridge among them)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addrs = [line.split()[3].split("/")[0] for line in out.splitlines()]
    found = [a for a in addrs if not a.startswith("127.")]
    assert found, out
    return found


def run(kernel: Kernel, code: str) -> str:
    res = kernel.execute(code)
    assert res.error is None and not res.kernel_died, res.error
    return res.stdout.strip()


def errno_of(kernel: Kernel, stmt: str) -> str:
    """Run ``stmt`` and print the errno name it failed with ('OK' when it did not fail)."""
    return run(
        kernel,
        f"import errno, os, socket\ntry:\n    {stmt}\n    print('OK')\n"
        f"except OSError as e:\n    print(errno.errorcode.get(e.errno, e.errno))",
    )


def test_data_templates_library_and_root_are_read_only(two_sessions):
    """Writing under /data, /templates, the library or the root filesystem fails with EROFS."""
    _, _, _, k = two_sessions
    for path in [
        "/data/x",
        "/data/wrds/crsp/daily/new.parquet",
        "/templates/x.ipynb",
        "/opt/research/x.py",
        "/etc/x",
        "/usr/local/lib/x",
    ]:
        assert errno_of(k, f"open({path!r}, 'w').write('x')") in {"EROFS", "EACCES"}, path
    # The data files belong to another uid, and the mount itself is read-only as well.
    assert errno_of(k, "open('/data/wrds/crsp/daily/2024.parquet', 'ab')") in {"EROFS", "EACCES"}
    assert errno_of(k, "os.remove('/data/MANIFEST.json')") in {"EROFS", "EACCES"}
    mounts = run(k, "print([l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == '/data'])")
    assert mounts.startswith("['ro,"), mounts


def test_workspace_is_writable_and_lands_in_the_users_host_folder(two_sessions):
    """A file written in the workspace appears in that user's folder on the host."""
    st, _, _, k = two_sessions
    run(k, "open('/home/jovyan/work/result.txt', 'w').write('alpha=0.42')")
    host_file = st.settings.workspaces_dir / "iso-a" / "result.txt"
    assert host_file.read_text() == "alpha=0.42"
    assert host_file.stat().st_uid == st.settings.notebook_uid


def test_other_users_workspace_is_not_visible(two_sessions):
    """Nothing of another user's workspace is reachable from a session."""
    st, _, sb, k = two_sessions
    out = run(
        k,
        (
            "import os\n"
            "hits = []\n"
            "for top in ['/home', '/data', '/tmp', '/opt', '/run', '/mnt', '/srv', '/templates', '/var', '/media']:\n"
            "    for root, dirs, files in os.walk(top):\n"
            "        hits += [os.path.join(root, f) for f in files if f == 'secret-of-b.txt']\n"
            "print(hits, os.path.exists('/home/jovyan/work/../iso-b'), 'iso-b' in open('/proc/self/mountinfo').read())\n"
        ),
    )
    assert out == "[] False False"
    # b's socket folder is not mounted here either.
    assert run(k, f"import os; print(os.path.exists('/run/nb/../{sb.id}'))") == "False"


def test_no_network_route_out(two_sessions):
    """Only loopback exists; no route to the internet, the metadata service, the host, Redis or Docker."""
    st, _, sb, k = two_sessions
    ifaces = run(k, "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))")
    assert ifaces == "['lo']"
    assert run(k, "print(len(open('/proc/net/route').read().splitlines()))") in {"0", "1"}  # header only
    # UDP connect() only looks up a route: it sends nothing.
    for addr in ["8.8.8.8", "1.1.1.1", "169.254.169.254"]:
        stmt = f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(({addr!r}, 53))"
        assert errno_of(k, stmt) == "ENETUNREACH", addr
    # TCP to this machine's Docker bridge (where the host's services answer) fails before any packet leaves.
    redis_port = int(st.redis_url.rsplit(":", 1)[1].split("/")[0])
    targets = [(addr, port) for addr in host_addresses() for port in (redis_port, 2375, 80)]
    for addr, port in [*targets, ("169.254.169.254", 80)]:
        stmt = f"socket.create_connection(({addr!r}, {port}), timeout=3)"
        assert errno_of(k, stmt) == "ENETUNREACH", (addr, port)
    # Loopback in the container is the container's own: the host's Redis is not there.
    assert errno_of(k, f"socket.create_connection(('127.0.0.1', {redis_port}), timeout=3)") == "ECONNREFUSED"
    assert (
        run(k, "import os; print([p for p in ['/var/run/docker.sock', '/run/docker.sock'] if os.path.exists(p)])")
        == "[]"
    )
    assert (
        run(
            k,
            "import socket\ntry:\n    socket.getaddrinfo('example.com', 80); print('resolved')\n"
            "except socket.gaierror:\n    print('no dns')",
        )
        == "no dns"
    )


def test_not_root_no_capabilities_no_new_privileges(two_sessions):
    """The notebook runs as the configured non-login uid with an empty capability set and no_new_privs."""
    st_, _, _, k = two_sessions
    out = run(
        k,
        (
            "import os\n"
            "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
            "print(os.getuid(), os.geteuid(), os.getgid(), st['CapEff'].strip(), st['CapPrm'].strip(), "
            "st['CapBnd'].strip(), st['NoNewPrivs'].strip())\n"
        ),
    )
    uid, gid = st_.settings.notebook_uid, st_.settings.notebook_gid
    assert uid != 1000 and out == f"{uid} {uid} {gid} 0000000000000000 0000000000000000 0000000000000000 1"
    assert errno_of(k, "os.setuid(0)") == "EPERM"
    assert errno_of(k, "os.chown('/home/jovyan/work', 0, 0)") == "EPERM"


def test_limits_are_applied_to_the_container(two_sessions):
    """The container carries the configured CPU, memory (no extra swap) and pids limits."""
    st, sa, _, _ = two_sessions
    [container] = st.containers(session=sa.id)
    hc = container.attrs["HostConfig"]
    assert hc["NanoCpus"] == int(st.settings.profile(None).cpus * 1e9)
    assert hc["Memory"] == 1024**3 and hc["MemorySwap"] == 1024**3
    assert hc["PidsLimit"] == st.settings.profile(None).pids_limit
    assert hc["ReadonlyRootfs"] is True and hc["NetworkMode"] == "none"
    assert hc["CapDrop"] == ["ALL"] and "no-new-privileges:true" in hc["SecurityOpt"]


def test_fork_loop_is_capped(two_sessions):
    """A fork loop hits the pids limit (EAGAIN) well before it can hurt the host."""
    st, _, _, k = two_sessions
    out = run(
        k,
        (
            "import os, time, errno, signal\n"
            "kids, err = [], None\n"
            "try:\n"
            "    for _ in range(5000):\n"
            "        pid = os.fork()\n"
            "        if pid == 0:\n"
            "            time.sleep(60); os._exit(0)\n"
            "        kids.append(pid)\n"
            "except OSError as e:\n"
            "    err = errno.errorcode[e.errno]\n"
            "for pid in kids:\n"
            "    os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)\n"
            "print(len(kids), err)\n"
        ),
    )
    forked, err = out.split()
    assert err == "EAGAIN"
    assert 0 < int(forked) < st.settings.profile(None).pids_limit


def test_memory_hog_kills_the_kernel_not_the_server(two_sessions):
    """Allocating past the memory limit kills the kernel; Jupyter, the worker and the stack live on."""
    st, sa, _, k = two_sessions
    hog = Kernel(k.client)
    try:
        res = hog.execute("b = b'x' * (1536 << 20)\nprint(len(b))", timeout=120)
        assert res.kernel_died and "1610612736" not in res.stdout
    finally:
        hog.close()
    assert k.client.get("/api/status").status_code == 200
    [container] = st.containers(session=sa.id)
    assert container.status == "running"
    assert st.worker.alive()
    fresh = Kernel(k.client)
    try:
        assert wait_for(lambda: fresh.execute("6*7").result == "42", 60, "a fresh kernel after the OOM kill")
    finally:
        fresh.close()
