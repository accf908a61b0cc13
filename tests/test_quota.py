"""Workspace quotas: a notebook cannot fill its host's disk, and an over-quota workspace cannot launch."""

from __future__ import annotations

import os

import pytest

from launcher.adapters.redis_store import SessionStore
from launcher.errors import LimitReached
from launcher.models import Actor, Role, SessionStatus
from launcher.service import LauncherService
from tests.helpers import Kernel, RecordingDispatcher, register_hosts
from tests.stack import start_stack
from tests.web import opened
from workers import hostfs, quota

FILL = """
import errno
written, err = 0, None
chunk = b'x' * (1 << 20)
try:
    with open('/home/jovyan/work/fill.bin', 'wb') as f:
        for _ in range(400):
            f.write(chunk); f.flush(); written += len(chunk)
        import os; os.fsync(f.fileno())
except OSError as e:
    err = errno.errorcode.get(e.errno, e.errno)
print(written >> 20, err)
"""


@pytest.mark.docker
def test_filling_a_workspace_stops_at_its_quota_and_the_launcher_keeps_working(workdir, redis_url):
    """`dd` into ~/work past a 0.1 GB quota ends in ENOSPC inside the notebook; the host's disk is not
    filled, the worker and a colleague's launch carry on, and the file survives a relaunch."""
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    st = start_stack(workdir / "quota", redis_url, client, workspace_quota_gb=0.1)
    try:
        filler = st.actor("q-filler")
        s = st.service.wait(filler, st.service.launch(filler, "alpha_research").id, {SessionStatus.RUNNING}, 120)
        workspace = st.settings.workspaces_dir / "q-filler"
        assert os.path.ismount(workspace)
        free_before = os.statvfs(st.workdir).f_bavail * os.statvfs(st.workdir).f_frsize
        origin = opened(st, s.id, "q-filler")
        kernel = Kernel(origin)
        res = kernel.execute(FILL, timeout=120)
        kernel.close()
        origin.close()
        written_mib, err = res.stdout.split()
        assert err == "ENOSPC" and int(written_mib) < 110, res.stdout
        image = quota.image_path(st.settings, "q-filler")
        assert image.stat().st_blocks * 512 <= 0.11 * 2**30  # the host paid at most the quota
        free_after = os.statvfs(st.workdir).f_bavail * os.statvfs(st.workdir).f_frsize
        assert free_before - free_after < 0.15 * 2**30
        # The launcher is unaffected: the heartbeat runs and another user launches.
        beat = st.service.dispatcher.app.send_task("workers.tasks.heartbeat", queue=st.settings.host_queue)
        assert beat.get(timeout=60)["running"] == 1
        other = st.actor("q-other")
        s2 = st.service.wait(other, st.service.launch(other, "alpha_research").id, {SessionStatus.RUNNING}, 120)
        assert s2.status == SessionStatus.RUNNING
        measured = st.service.dispatcher.app.send_task("workers.tasks.measure_workspaces", queue=st.settings.host_queue)
        assert measured.get(timeout=60)["measured"] == 2
        usage = st.service.workspace_usage(filler)
        assert usage.enforced and usage.fraction > 0.9
        st.stop_everything()
        assert not os.path.ismount(workspace)  # released with the session; the image keeps the files
        s3 = st.service.wait(filler, st.service.launch(filler, "alpha_research").id, {SessionStatus.RUNNING}, 120)
        assert s3.status == SessionStatus.RUNNING
        assert (workspace / "fill.bin").stat().st_size >= int(written_mib) * 2**20 > 0
        st.stop_everything()
    finally:
        st.shutdown()


def test_measured_workspace_over_quota_cannot_launch(unit_settings, redis_url, tmp_path):
    """Where the filesystem does not enforce quotas, a launch over the quota is refused with a clear
    message and creates nothing; under it, the launch goes ahead."""
    settings = unit_settings.model_copy(
        update={"redis_url": redis_url, "workspace_quota_gb": 1e-5, "workspace_quota_enforce": "measure"}
    )
    assert not quota.filesystem_mode(settings)
    workspace = hostfs.prepare_workspace(settings, "q-hoarder")
    (workspace / "data.bin").write_bytes(b"x" * 64 * 1024)
    usage = quota.measure(settings, workspace)
    assert usage.over and not usage.enforced and usage.used_bytes >= 64 * 1024
    store = SessionStore.from_settings(settings)
    register_hosts(store, settings.host_name)
    store.set_usage("q-hoarder", usage)
    dispatcher = RecordingDispatcher()
    service = LauncherService(settings, store, dispatcher)
    actor = service_actor = Actor(name="q-hoarder", role=Role.RESEARCHER)
    with pytest.raises(LimitReached, match="over its quota"):
        service.launch(actor, "alpha_research")
    assert store.count_live() == 0 and dispatcher.sent == []
    (workspace / "data.bin").unlink()
    store.set_usage("q-hoarder", quota.measure(settings, workspace))
    assert service.launch(service_actor, "alpha_research").status == SessionStatus.QUEUED
    store.redis.close()
