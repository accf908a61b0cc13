"""Probes into notebooks are bounded: real hostile servers on UNIX sockets, a real Redis, no Docker.

The servers are bench/fake_jupyter.py in a subprocess of the test (one socket per behaviour). Time
bounds are generous (deadline + 3 s): the point is "returns", not how fast, on a shared machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from launcher.adapters.jupyter_http import BadAnswer, NoAnswer, api_get, wait_ready
from launcher.adapters.memory_runtime import FakeRuntime
from launcher.adapters.redis_store import SessionStore
from launcher.errors import RuntimeUnavailable, StartFailed
from launcher.models import Reason, Session, SessionStatus, new_session_id, new_token, utcnow
from launcher.policy import ReapPolicy, Verdict, should_reap
from launcher.ports import ContainerState
from launcher.settings import REPO_ROOT, Settings
from launcher.spec import container_name
from launcher.transitions import ActorKind, By, MarkRunning, MarkStarting, RecordActivity
from tests.helpers import register_hosts
from tests.stack import random_instance
from workers import hostfs, lifecycle, sweeps
from workers.activity import probe

FAKE = REPO_ROOT / "bench" / "fake_jupyter.py"
TOKEN = "probe-bounds-token-0123456789abcdefghijklmnop"
MARGIN = 3.0  # seconds: generous, the machine is shared


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (a UNIX socket path must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nbp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_fake(sessions: list[tuple[Path, str, str]]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(FAKE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdin.write("".join(f"{path} {token} {behaviour}\n" for path, token, behaviour in sessions))
    proc.stdin.close()
    assert proc.stdout.readline().strip() == "ready", "fake_jupyter did not start"
    return proc


def stop_fake(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    proc.stdout.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Path]]:
    """One fake server per behaviour, each on its own socket."""
    from bench.fake_jupyter import BEHAVIOURS

    folder = Path(tempfile.mkdtemp(prefix="nbp-", dir="/tmp"))
    paths = {b: folder / b / "jupyter.sock" for b in BEHAVIOURS}
    proc = start_fake([(path, TOKEN, b) for b, path in paths.items()])
    yield paths
    stop_fake(proc)
    shutil.rmtree(folder, ignore_errors=True)


def timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    try:
        return fn(*args, **kwargs), None, time.monotonic() - t0
    except Exception as exc:  # noqa: BLE001
        return None, exc, time.monotonic() - t0


# -- one probe ----------------------------------------------------------------------------------


def test_well_behaved_server_is_read(servers):
    """An idle, a busy and a terminals-disabled server give their kernels, busy count and activity."""
    idle = probe(servers["idle"], TOKEN)
    assert (idle.kernels, idle.kernels_busy, idle.connections, idle.terminals) == (1, 0, 1, 0)
    assert utcnow() - timedelta(seconds=60) < idle.last_activity <= utcnow()
    busy = probe(servers["busy"], TOKEN)
    assert busy.kernels_busy == 1 and utcnow() - busy.last_activity < timedelta(seconds=60)
    assert probe(servers["no-terminals"], TOKEN).terminals == 0


def test_wrong_token_is_a_bad_answer_with_its_status(servers):
    """A server refusing the launcher's header is a BadAnswer carrying status 403."""
    with pytest.raises(BadAnswer) as caught:
        api_get(servers["idle"], "not-the-token", "status")
    assert caught.value.status == 403


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("slow-loris", BadAnswer),
        ("slow-body", NoAnswer),
        ("slow-head", NoAnswer),
        ("hang", NoAnswer),
        ("huge", BadAnswer),
        ("endless-chunks", BadAnswer),
        ("unsized", BadAnswer),
        ("garbage", NoAnswer),
        ("close", NoAnswer),
    ],
)
def test_hostile_transport_is_cut_off_at_the_deadline(servers, behaviour, error):
    """A server that dribbles, hangs, floods or speaks no HTTP costs the probe at most its deadline."""
    deadline = 2.5  # longer than the 1.9 s between slow bytes: a per-read timeout would never fire
    _, exc, took = timed(probe, servers[behaviour], TOKEN, deadline=deadline)
    assert isinstance(exc, error), repr(exc)
    assert took < deadline + MARGIN, f"{behaviour}: {took:.1f} s"


def test_declared_oversize_body_is_refused_before_reading(servers):
    """A Content-Length above the cap is refused from the headers alone."""
    with pytest.raises(BadAnswer, match="declares 67108864 bytes"):
        api_get(servers["huge"], TOKEN, "kernels", deadline=20)


def test_deadline_covers_the_whole_call_not_each_read(servers):
    """One byte every 1.9 s never trips a 5 s read timeout, yet the call ends at its 5 s deadline."""
    _, exc, took = timed(api_get, servers["slow-body"], TOKEN, "kernels", deadline=5.0)
    assert isinstance(exc, NoAnswer) and "within 5 s" in str(exc)
    assert took < 5.0 + MARGIN


@pytest.mark.parametrize(
    "behaviour",
    ["not-json", "nested", "status-list", "kernels-object", "kernel-items", "bad-stamp", "stamp-number", "bad-count"],
)
def test_wrong_shapes_are_bad_answers(servers, behaviour):
    """Garbage JSON, deep nesting and wrong shapes or types are a BadAnswer, promptly, never another error."""
    _, exc, took = timed(probe, servers[behaviour], TOKEN, deadline=2.0)
    assert isinstance(exc, BadAnswer), repr(exc)
    assert took < 2.0 + MARGIN


def test_future_timestamps_are_clamped_to_now(servers):
    """Kernels and terminals claiming activity in 2999 count as active now, not in the future."""
    before = utcnow()
    seen = probe(servers["future"], TOKEN)
    assert before <= seen.last_activity <= utcnow()


def test_only_a_socket_is_connected_to(short_dir, servers):
    """A symlink to a working socket, a plain file, or nothing at the path: NoAnswer."""
    link = short_dir / "link.sock"
    link.symlink_to(servers["idle"])
    plain = short_dir / "plain.sock"
    plain.write_text("x")
    for path in (link, plain, short_dir / "missing.sock"):
        with pytest.raises(NoAnswer):
            probe(path, TOKEN)


def test_wait_ready_gives_up_at_its_timeout_on_a_hung_server(servers):
    """A server that accepts and never answers makes the start fail at its timeout, not hang."""
    _, exc, took = timed(wait_ready, servers["hang"], TOKEN, timeout=2.0, still_alive=lambda: True)
    assert isinstance(exc, StartFailed) and "did not answer within 2 s" in str(exc)
    assert took < 2.0 + MARGIN
    assert wait_ready(servers["idle"], TOKEN, timeout=5.0, still_alive=lambda: True) < 5.0


# -- the heartbeat ------------------------------------------------------------------------------


def worker_context(redis_url: str, folder: Path) -> lifecycle.WorkerContext:
    settings = Settings(
        instance=random_instance(),
        redis_url=redis_url,
        sessions_dir=folder / "s",
        max_sessions=100,
        max_sessions_per_host=100,
    )
    store = SessionStore.from_settings(settings)
    register_hosts(store, settings.host_name, max_sessions=100)
    return lifecycle.WorkerContext(settings, store, FakeRuntime())


def running(ctx: lifecycle.WorkerContext, user: str, kernels_busy: int = 0) -> Session:
    """A running session whose last activity was an hour ago, with a container that runs."""
    s = ctx.store.reserve(
        Session(id=new_session_id(), user=user, template="alpha_research", token=new_token()), actor="t"
    )
    hour_ago = utcnow() - timedelta(hours=1)
    by = By(ActorKind.WORKER, "t")
    ctx.store.apply(s.id, MarkStarting(by=by, reason=Reason.START))
    ctx.store.apply(s.id, MarkRunning(by=by, reason=Reason.READY, url="http://x", at=hour_ago))
    s = ctx.store.apply(s.id, RecordActivity(by=by, reason=Reason.ACTIVITY, kernels_busy=kernels_busy))
    ctx.runtime.start({"name": container_name(ctx.settings, s.id), "labels": {}})
    return s


def served(ctx: lifecycle.WorkerContext, sessions: dict[str, Session]) -> subprocess.Popen:
    return start_fake(
        [(hostfs.socket_path(ctx.settings, s.id), s.token.get_secret_value(), b) for b, s in sessions.items()]
    )


HEALTHY = ["idle", "busy", "future", "no-terminals"]
HOSTILE = ["slow-loris", "slow-body", "slow-head", "hang", "huge", "endless-chunks", "garbage", "not-json", "bad-stamp"]


def test_heartbeat_updates_healthy_sessions_despite_hostile_ones(redis_url, short_dir):
    """One sweep over healthy, hostile and dead sessions: healthy ones updated, hostile ones not busy, on time."""
    ctx = worker_context(redis_url, short_dir)
    sessions = {b: running(ctx, f"u-{b}", kernels_busy=2) for b in HEALTHY + HOSTILE}
    dead = running(ctx, "u-dead")
    ctx.runtime.containers[container_name(ctx.settings, dead.id)].state = ContainerState.EXITED
    proc = served(ctx, sessions)
    try:
        before = utcnow()
        counts, exc, took = timed(sweeps.heartbeat, ctx, probe_deadline=2.0, sweep_deadline=6.0)
    finally:
        stop_fake(proc)
    assert exc is None, repr(exc)
    assert took < 6.0 + MARGIN, f"sweep took {took:.1f} s"
    assert counts == {"running": 14, "updated": 4, "dead": 1, "unreachable": 9, "skipped": 0}
    after = {b: ctx.store.get(s.id) for b, s in sessions.items()}
    for b in HEALTHY:
        assert before - timedelta(seconds=60) < after[b].last_activity_at <= utcnow(), b
    assert [after[b].kernels_busy for b in HEALTHY] == [0, 1, 0, 0]
    for b in HOSTILE:  # was busy, did not answer: no longer held busy; status and activity untouched
        assert after[b].status == SessionStatus.RUNNING and after[b].kernels_busy == 0, b
        assert after[b].last_activity_at < before - timedelta(minutes=59), b
    policy = ReapPolicy(idle_timeout=timedelta(hours=1))
    assert should_reap(after["future"], utcnow() + timedelta(hours=1, seconds=1), policy).verdict == Verdict.REAP
    assert should_reap(after["hang"], utcnow(), policy).verdict == Verdict.REAP
    gone = ctx.store.get(dead.id)
    assert gone.status == SessionStatus.ERROR and gone.stop_reason == Reason.DIED


def probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("heartbeat-probe")]


def test_sweep_deadline_abandons_probes_and_skips_the_rest(redis_url, short_dir):
    """Six hung servers, two probe slots, 5 s probes, a 1.5 s sweep: it returns on time and leaks no thread."""
    ctx = worker_context(redis_url, short_dir)
    sessions = {f"h{i}": running(ctx, f"hung-{i}", kernels_busy=1) for i in range(6)}
    proc = start_fake(
        [(hostfs.socket_path(ctx.settings, s.id), s.token.get_secret_value(), "hang") for s in sessions.values()]
    )
    try:
        counts, exc, took = timed(sweeps.heartbeat, ctx, max_parallel=2, probe_deadline=5.0, sweep_deadline=1.5)
        assert exc is None, repr(exc)
        assert took < 1.5 + MARGIN, f"sweep took {took:.1f} s (waiting for every probe would take 15 s)"
        assert counts["unreachable"] + counts["skipped"] == 6 and counts["skipped"] >= 1, counts
        busy = [ctx.store.get(s.id).kernels_busy for s in sessions.values()]
        assert busy.count(0) == counts["unreachable"] and busy.count(1) == counts["skipped"]  # skipped: untouched
        deadline = time.monotonic() + MARGIN
        while probe_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe_threads() == []
    finally:
        stop_fake(proc)


class DockerDown(FakeRuntime):
    """The in-memory runtime, except that the engine does not answer state lookups (counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def state(self, name: str) -> ContainerState:
        self.lookups += 1
        raise RuntimeUnavailable("the Docker engine on this host is not reachable")


def test_docker_down_costs_one_lookup_and_silent_sessions_are_not_busy(redis_url, short_dir):
    """With Docker not answering, the sweep asks it once, then still records every silent server as not busy."""
    ctx = worker_context(redis_url, short_dir)
    ctx = lifecycle.WorkerContext(ctx.settings, ctx.store, DockerDown())
    sessions = {f"c{i}": running(ctx, f"closing-{i}", kernels_busy=1) for i in range(4)}
    healthy = running(ctx, "healthy")
    proc = start_fake(
        [(hostfs.socket_path(ctx.settings, s.id), s.token.get_secret_value(), "close") for s in sessions.values()]
        + [(hostfs.socket_path(ctx.settings, healthy.id), healthy.token.get_secret_value(), "busy")]
    )
    try:
        counts = sweeps.heartbeat(ctx, probe_deadline=2.0, sweep_deadline=4.0)
    finally:
        stop_fake(proc)
    assert counts == {"running": 5, "updated": 1, "dead": 0, "unreachable": 4, "skipped": 0}
    assert ctx.runtime.lookups == 1
    assert [ctx.store.get(s.id).kernels_busy for s in sessions.values()] == [0, 0, 0, 0]
    assert ctx.store.get(healthy.id).kernels_busy == 1
