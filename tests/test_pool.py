"""The warm pool on a real engine (issue 12): pre-booted notebook servers claimed by launches.

One stack with a pool of one ``standard`` container: a launch claims it (the workspace and template are there, a
kernel sees USER_ID, JupyterLab answers through the entry point), stop leaves no mount and no container, the pool
refills; an empty pool falls back to the cold path (a terminal has the session's identity in both); a worker killed between the mount and the claim record is
reconciled with the workspace intact; the isolation checks hold inside a claimed container.
"""

from __future__ import annotations

import json
import re

import docker
import pytest

from launcher.models import Actor, Role, SessionStatus
from launcher.spec import container_name
from tests.helpers import Kernel, Terminal, wait_for
from tests.stack import Stack, start_stack
from tests.web import opened
from workers import mounts, pool, quota
from workers.lifecycle import WorkerContext

pytestmark = pytest.mark.docker
ADMIN = Actor(name="pool-admin", role=Role.ADMIN)
RUNNING = {SessionStatus.RUNNING}


@pytest.fixture(scope="module")
def stack(workdir, redis_url) -> Stack:
    # under the session's workdir (mode 0755): nginx's workers must reach the authorizer's socket in it
    st = start_stack(workdir / "pool", redis_url, docker.from_env(), pool_sizes={"standard": 1})
    yield st
    st.stop_everything()
    st.worker.stop()  # its pool keeper first: nothing boots while the pool is taken down
    for slot in list(st.store.pool_slots(st.settings.host_name)):
        pool.destroy(WorkerContext(st.settings, st.store, st.runtime), slot)
    st.shutdown()


def idle_slots(st: Stack) -> list[str]:
    return [s for s, r in st.store.pool_slots(st.settings.host_name).items() if r.get("state") == "idle"]


def pool_containers(st: Stack) -> list:
    return [c for c in st.containers() if c.labels.get(pool.POOL_LABEL)]


def wait_pool_full(st: Stack) -> str:
    [slot] = wait_for(lambda: idle_slots(st) or None, 120, "the pool to boot a container")
    return slot


def test_a_launch_claims_the_pooled_container(stack: Stack) -> None:
    st = stack
    slot = wait_pool_full(st)
    [booted] = [c for c in pool_containers(st) if c.labels[pool.POOL_LABEL] == slot]
    assert booted.name == pool.pool_container_name(st.settings, slot)
    assert "USER_ID" not in " ".join(booted.attrs["Config"]["Env"])  # no identity before the claim

    ann = Actor(name="pool-ann", role=Role.RESEARCHER)
    session = st.service.launch(ann, "alpha_research")
    ran = st.service.wait(ADMIN, session.id, RUNNING, 60)
    assert ran.status == SessionStatus.RUNNING, ran.error
    assert ran.container_id == booted.id  # the pooled container, not a new one
    assert st.store.get(ran.id).pool_slot == slot
    claimed = st.docker.containers.get(container_name(st.settings, ran.id))
    assert claimed.id == booted.id and claimed.attrs["HostConfig"]["CpuShares"] == pool.SESSION_CPU_SHARES
    assert mounts.is_mounted(st.settings, slot)

    client = opened(st, ran.id, "pool-ann")
    try:
        lab = client.get("/lab/tree/alpha_research.ipynb")
        assert lab.status_code == 200 and "JupyterLab" in lab.text
        listing = client.get("/api/contents").json()
        assert "alpha_research.ipynb" in {item["name"] for item in listing["content"]}
        k = Kernel(client)
        assert k.execute("import os; print(os.environ.get('USER_ID'))").stdout.strip() == "pool-ann"
        assert k.execute("print(sorted(os.listdir('/home/jovyan/work')))").stdout.count("alpha_research.ipynb") == 1
        wrote = k.execute("with open('/home/jovyan/work/from-pool.txt', 'w') as f:\n    f.write('kept')")
        assert wrote.error is None, wrote.error
        mountinfo = k.execute("print(open('/proc/self/mountinfo').read())").stdout
        slots_seen = set(re.findall(r"pool-slots/(p[a-z0-9]{11})", mountinfo))
        assert slots_seen <= {slot}, slots_seen  # its own slot at most (a bind's source path), never another
        k.close()
    finally:
        client.close()
    workspace = st.settings.workspaces_dir / "pool-ann"
    assert (workspace / "from-pool.txt").read_text() == "kept"

    st.service.stop(ann)
    st.service.wait(ADMIN, ran.id, {SessionStatus.STOPPED}, 60)
    wait_for(lambda: not mounts.is_mounted(st.settings, slot), 30, "the slot to be unmounted")
    assert not mounts.slot_path(st.settings, slot).exists()
    with quota.user_lock("pool-ann"):  # the workspace (its quota image, released at stop) kept the file
        attached = quota.attach(st.settings, "pool-ann", workspace)
        try:
            assert (workspace / "from-pool.txt").read_text() == "kept"
        finally:
            if attached:
                quota.detach(st.settings, "pool-ann")
    wait_for(lambda: booted.id not in [c.id for c in st.containers()], 30, "the claimed container to go")
    new_slot = wait_pool_full(st)  # refilled, with a new container
    assert new_slot != slot


def test_an_empty_pool_falls_back_to_a_cold_start(stack: Stack) -> None:
    st = stack
    wait_pool_full(st)
    first = st.service.launch(Actor(name="pool-bob", role=Role.RESEARCHER), "factor_analysis")
    second = st.service.launch(Actor(name="pool-cyd", role=Role.RESEARCHER), "alpha_research")
    a = st.service.wait(ADMIN, first.id, RUNNING, 120)
    b = st.service.wait(ADMIN, second.id, RUNNING, 120)
    assert a.status == b.status == SessionStatus.RUNNING
    assert sorted([a.pool_slot is not None, b.pool_slot is not None]) == [False, True]  # one claimed, one cold
    cold = a if a.pool_slot is None else b
    client = opened(st, cold.id, cold.user)
    try:
        k = Kernel(client)
        assert k.execute("import os; print(os.environ['USER_ID'])").stdout.strip() == cold.user
        k.close()
    finally:
        client.close()
    # JupyterLab's terminal: a login shell as the session's user, with the session's identity whether the container
    # was claimed from the pool (identity.json, /etc/profile.d/nbl_identity.sh) or started for the session.
    for session in (a, b):
        client = opened(st, session.id, session.user)
        try:
            term = Terminal(client)
            shown = term.run('echo "uid=$(id -u) user=${USER_ID:-none} end"', re.compile(r"uid=(\d+) user=(\S+) end"))
            assert shown.groups() == (str(st.settings.notebook_uid), session.user), (session.pool_slot, shown.group(0))
            term.close()
        finally:
            client.close()
    st.stop_everything()


def test_a_worker_lost_between_mount_and_claim_record_is_reconciled(stack: Stack) -> None:
    """The mount was made but the claim never recorded (the worker died): reconcile destroys the pool container and
    unmounts the slot; the workspace and its files are intact; nothing else is removed."""
    st = stack
    slot = wait_pool_full(st)
    ctx = WorkerContext(st.settings, st.store, st.runtime)
    workspace = st.settings.workspaces_dir / "pool-dee"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "precious.txt").write_text("do not delete")
    assert st.store.pool_retire(st.settings.host_name, "standard", slot)  # taken, as a claim would
    mounts.bind(st.settings, slot, workspace)  # ... and mounted; then the worker "died"
    counts = pool.reconcile(ctx)
    assert counts["destroyed"] >= 1
    assert not mounts.is_mounted(st.settings, slot)
    assert (workspace / "precious.txt").read_text() == "do not delete"
    assert all(c.labels.get(pool.POOL_LABEL) != slot for c in st.containers())
    wait_pool_full(st)


def test_claimed_containers_hold_the_isolation(stack: Stack) -> None:
    """Inside a claimed container: read-only data and root, no network, no capabilities, the limits, and no other
    slot or user in the mount table."""
    st = stack
    wait_pool_full(st)
    eve = Actor(name="pool-eve", role=Role.RESEARCHER)
    ran = st.service.wait(ADMIN, st.service.launch(eve, "alpha_research").id, RUNNING, 60)
    assert ran.pool_slot is not None
    hc = st.docker.containers.get(container_name(st.settings, ran.id)).attrs["HostConfig"]
    profile = st.settings.profile(None)
    assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True and hc["CapDrop"] == ["ALL"]
    assert (hc["NanoCpus"], hc["Memory"], hc["PidsLimit"]) == (int(profile.cpus * 1e9), profile.mem_bytes,
                                                                 profile.pids_limit)
    client = opened(st, ran.id, "pool-eve")
    try:
        k = Kernel(client)
        probe = k.execute(
            "import os, socket, errno, json\n"
            "out = {}\n"
            "for path in ('/data/x', '/x', '/opt/research/x'):\n"
            "    try: open(path, 'w'); out[path] = 'written'\n"
            "    except OSError as e: out[path] = errno.errorcode[e.errno]\n"
            "s = socket.socket(); s.settimeout(2)\n"
            "try: s.connect(('1.1.1.1', 80)); out['net'] = 'connected'\n"
            "except OSError as e: out['net'] = errno.errorcode.get(e.errno, str(e))\n"
            "out['ifaces'] = sorted(os.listdir('/sys/class/net'))\n"
            "out['caps'] = [l for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs'))]\n"
            "out['mounts'] = open('/proc/self/mountinfo').read()\n"
            "print(json.dumps(out))"
        ).stdout
        k.close()
    finally:
        client.close()
    out = json.loads(probe)
    assert out["/data/x"] == out["/x"] == out["/opt/research/x"] == "EROFS"
    assert out["net"] == "ENETUNREACH" and out["ifaces"] == ["lo"]
    assert out["caps"] == ["CapEff:\t0000000000000000\n", "NoNewPrivs:\t1\n"]
    assert set(re.findall(r"pool-slots/(p[a-z0-9]{11})", out["mounts"])) <= {ran.pool_slot}
    assert "pool-ann" not in out["mounts"] and "pool-dee" not in out["mounts"]  # no other user's workspace
    st.stop_everything()


def test_the_pool_yields_while_launches_wait(stack: Stack) -> None:
    """While a launch waits in the queue, the pool does not hold room: its idle container is destroyed, and it is
    not refilled until the queue is empty; the waiting launch is admitted when the host takes launches again."""
    st = stack
    slot = wait_pool_full(st)
    host = st.settings.host_name
    st.store.set_draining(host, True)
    try:
        waiting = st.service.launch(Actor(name="pool-fay", role=Role.RESEARCHER), "alpha_research")
        assert waiting.status == SessionStatus.WAITING
        wait_for(lambda: slot not in st.store.pool_slots(host), 30, "the pool to shrink for the waiting launch")
        assert not idle_slots(st)
    finally:
        st.service.drain(ADMIN, host, draining=False)
    ran = st.service.wait(ADMIN, waiting.id, RUNNING, 120)
    assert ran.status == SessionStatus.RUNNING
    st.stop_everything()
    wait_pool_full(st)  # and refills once nothing waits
