"""Per-session CPU and memory from the host's cgroup files (workers/cgroup_stats.py), stored for admins
(launcher/adapters/redis_stats.py): parsing on fake cgroup trees, the Redis side, and a real container."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from launcher.adapters.redis_stats import SessionStats, StatsStore
from launcher.models import Session, SessionStatus, new_session_id, new_token
from launcher.settings import Settings
from tests.stack import random_instance
from workers import cgroup_stats
from workers.cgroup_stats import READ_MAX, Sample, cpu_percent, read_sample, record

CID = "0123456789abcdef" * 4
V1_STAT = "cache 4096\nrss 1000\ntotal_cache 8192\ntotal_inactive_file 3000\ntotal_active_file 10\n"
V2_STAT = "anon 5000\nfile 9000\nactive_file 100\ninactive_file 2500\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v1(root: Path, cid: str = CID, usage: int = 5_000_000_000, mem: int = 10_000, limit: str = "1073741824") -> None:
    _write(root / "cpuacct" / "docker" / cid / "cpuacct.usage", f"{usage}\n")
    _write(root / "memory" / "docker" / cid / "memory.usage_in_bytes", f"{mem}\n")
    _write(root / "memory" / "docker" / cid / "memory.stat", V1_STAT)
    _write(root / "memory" / "docker" / cid / "memory.limit_in_bytes", f"{limit}\n")


def test_cgroup_v1(tmp_path):
    _v1(tmp_path)
    sample = read_sample(CID, tmp_path, now=100.0)
    assert sample == Sample(cpu_usage_ns=5_000_000_000, mem_bytes=10_000 - 3000, mem_limit_bytes=2**30, at=100.0)


def test_cgroup_v1_without_a_limit_or_some_files(tmp_path):
    _v1(tmp_path, limit="9223372036854771712")  # what v1 reports when there is no limit
    (tmp_path / "memory" / "docker" / CID / "memory.stat").unlink()
    (tmp_path / "cpuacct" / "docker" / CID / "cpuacct.usage").unlink()
    sample = read_sample(CID, tmp_path, now=1.0)
    assert sample == Sample(cpu_usage_ns=None, mem_bytes=10_000, mem_limit_bytes=None, at=1.0)


def test_cgroup_v2_systemd_and_cgroupfs_layouts(tmp_path):
    for group in (tmp_path / "a" / "system.slice" / f"docker-{CID}.scope", tmp_path / "b" / "docker" / CID):
        _write(group / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
        _write(group / "memory.current", "20000\n")
        _write(group / "memory.stat", V2_STAT)
        _write(group / "memory.max", "max\n")
    for root in (tmp_path / "a", tmp_path / "b"):
        sample = read_sample(CID, root, now=5.0)
        assert sample == Sample(cpu_usage_ns=2_500_000_000, mem_bytes=20_000 - 2500, mem_limit_bytes=None, at=5.0)
    _write(tmp_path / "a" / "system.slice" / f"docker-{CID}.scope" / "memory.max", "536870912\n")
    assert read_sample(CID, tmp_path / "a").mem_limit_bytes == 512 * 2**20


def test_missing_malformed_hostile(tmp_path):
    assert read_sample(CID, tmp_path) is None  # no cgroup: a stopped container, or a worker in its own namespace
    for bad in ("../../etc", "", "ABC", CID + "/..", "x" * 64):
        assert read_sample(bad, tmp_path) is None
    _v1(tmp_path)
    _write(tmp_path / "cpuacct" / "docker" / CID / "cpuacct.usage", "not a number\n")
    # A huge memory.stat is read only up to READ_MAX: a key past it is not found (and nothing blows up).
    _write(tmp_path / "memory" / "docker" / CID / "memory.stat", "x 1\n" * (READ_MAX // 4) + "total_inactive_file 3000\n")
    _write(tmp_path / "memory" / "docker" / CID / "memory.usage_in_bytes", "1" * (READ_MAX * 4))
    sample = read_sample(CID, tmp_path, now=1.0)
    assert sample.cpu_usage_ns is None and sample.mem_limit_bytes == 2**30
    assert sample.mem_bytes is None  # read only up to READ_MAX, and no 64-bit counter has that many digits
    _write(tmp_path / "memory" / "docker" / CID / "memory.usage_in_bytes", "2000\n")  # less than the inactive cache
    _write(tmp_path / "memory" / "docker" / CID / "memory.stat", V1_STAT)
    assert read_sample(CID, tmp_path).mem_bytes == 2000


def _stats(usage: int | None, at: float | None) -> SessionStats:
    return SessionStats(None, None, None, datetime.now(UTC), cpu_usage_ns=usage, sampled_at=at)


@pytest.mark.parametrize(
    ("previous", "usage", "at", "percent"),
    [
        (_stats(1_000_000_000, 100.0), 1_500_000_000, 101.0, 50.0),  # half a CPU for a second
        (_stats(0, 100.0), 4_000_000_000, 102.0, 200.0),  # two CPUs busy
        (None, 5, 1.0, None),  # the first heartbeat: no delta yet
        (_stats(None, 100.0), 5, 101.0, None),
        (_stats(9_000_000_000, 100.0), 1_000, 101.0, None),  # a new container under the same session
        (_stats(0, 100.0), 1_000, 100.0, None),  # no time passed (or the clock stepped back)
    ],
)
def test_cpu_percent_is_the_counters_growth_over_wall_time(previous, usage, at, percent):
    assert cpu_percent(previous, Sample(usage, None, None, at)) == percent


def test_stats_in_redis(redis_url, tmp_path):
    settings = Settings(instance=random_instance(), redis_url=redis_url, heartbeat_interval_s=2)
    client = redis.Redis.from_url(settings.redis_dsn(), decode_responses=True)
    stats = StatsStore(client, settings)
    running = Session(
        id=new_session_id(), user="cg-ann", template="alpha_research", token=new_token(),
        status=SessionStatus.RUNNING, container_id=CID,
    )
    stopped = running.model_copy(update={"id": new_session_id(), "status": SessionStatus.STOPPED})
    no_container = running.model_copy(update={"id": new_session_id(), "container_id": None})
    _v1(tmp_path, usage=1_000_000_000)
    assert record(stats, [running, stopped, no_container], tmp_path) == 1
    first = stats.get(running.id)
    assert first.cpu_percent is None and first.mem_bytes == 7000 and first.mem_limit_bytes == 2**30
    assert 0 < client.ttl(f"{settings.instance}:stats:{running.id}") <= 6  # three heartbeat intervals
    time.sleep(0.2)
    _v1(tmp_path, usage=1_100_000_000)
    record(stats, [running], tmp_path)
    second = stats.get(running.id)
    assert second.cpu_percent is not None and 10 < second.cpu_percent <= 50, second
    assert second.measured_at > first.measured_at
    assert set(stats.get_many([running.id, stopped.id, no_container.id])) == {running.id}
    assert stats.get_many([]) == {}
    client.set(f"{settings.instance}:stats:{stopped.id}", "{not json")
    assert stats.get(stopped.id) is None and set(stats.get_many([running.id, stopped.id])) == {running.id}
    raw = client.get(f"{settings.instance}:stats:{running.id}")
    assert set(__import__("json").loads(raw)) >= {"cpu_percent", "mem_bytes", "mem_limit_bytes", "measured_at"}
    client.close()


@pytest.mark.docker
def test_a_running_sessions_stats_after_heartbeats(clean_stack):
    """A real session's container: after two heartbeats its memory, limit and CPU figures are stored, and reading
    them costs a small fraction of ``docker stats``."""
    from launcher.adapters.docker_runtime import DockerRuntime
    from workers import lifecycle, sweeps

    st = clean_stack
    actor = st.actor("cg-carl")
    session = st.service.wait(actor, st.service.launch(actor, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    assert session.status == SessionStatus.RUNNING and session.container_id, session
    ctx = lifecycle.WorkerContext(st.settings, st.store, DockerRuntime(st.docker))
    sweeps.heartbeat(ctx)
    time.sleep(1)
    sweeps.heartbeat(ctx)
    stats = StatsStore(st.store.redis, st.settings).get(session.id)
    assert stats is not None, "no figures stored: are the host's cgroup files at /sys/fs/cgroup?"
    assert stats.mem_bytes and 10 * 2**20 < stats.mem_bytes < 2**30, stats  # Jupyter uses tens of MB
    assert stats.mem_limit_bytes == 2**30  # the stack's limit, 1g
    assert stats.cpu_percent is not None and 0 <= stats.cpu_percent <= 100 * st.settings.profile(None).cpus + 5, stats

    t0 = time.perf_counter()
    for _ in range(20):
        assert cgroup_stats.read_sample(session.container_id) is not None
    per_read = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    st.docker.containers.get(session.container_id).stats(stream=False)
    docker_stats = time.perf_counter() - t0
    print(f"\ncgroup read {per_read * 1000:.2f} ms per container; docker stats {docker_stats * 1000:.0f} ms")


def test_the_admin_table_columns(redis_url):
    """The admin sessions table's "CPU %" and "Memory" (ui.views), empty for a session with no figures."""
    from types import SimpleNamespace

    from ui.views import _resource_columns

    settings = Settings(instance=random_instance(), redis_url=redis_url)
    client = redis.Redis.from_url(settings.redis_dsn(), decode_responses=True)
    measured, unknown = new_session_id(), new_session_id()
    now = datetime.now(UTC)
    StatsStore(client, settings).put(measured, SessionStats(12.34, 300 * 2**20, 2**30, now))
    service = SimpleNamespace(store=SimpleNamespace(redis=client), settings=settings)
    rows: list[dict] = [{"session": measured}, {"session": unknown}]
    _resource_columns(service, [SimpleNamespace(id=measured), SimpleNamespace(id=unknown)], rows)
    assert rows[0]["CPU %"] == "12.3" and rows[0]["Memory"] == "300.0 MB of 1.0 GB"
    assert rows[1]["CPU %"] == "" and rows[1]["Memory"] == ""
    client.close()
