"""The fault suite: faults injected into the real components (Redis, Celery worker and Beat, Docker, nginx, the
notebook image) while sessions are mid-flight, and what every fault must leave true.

Two stacks of their own. Stack A has deadlines of tens of seconds and no idle reaping; its Redis keeps an
append-only file and is restarted in place; its worker reaches Docker through a relay the tests cut, hold and
restore (``tests.faults.DockerRelay``). Stack B has an 8 s idle timeout and deadlines a long outage outlasts.
Beat runs for real in both (heartbeat, reap and deadline sweep every second, reconcile every 3 s).

For every case: within the deadlines each session is ``running`` in exactly one live container or ended
(``stopped`` / ``error``) with a reason its owner can read; no orphan container, session folder or mounted
workspace image; no seat or user lock without a live session (``tests.faults.problems``); the audit stream
tells the story. Recovery times are printed (``-s``) and recorded in docs/architecture.md.

    LAUNCHER_REQUIRE_DOCKER=1 python3 -m pytest tests/test_faults.py -s
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
import pytest

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.errors import LauncherError, RuntimeUnavailable
from launcher.models import Actor, Session, SessionStatus
from launcher.service import LauncherService
from launcher.spec import LABEL_PREFIX, container_name
from tests.faults import (
    ENDED,
    DockerRelay,
    Hold,
    RestartableRedis,
    container_of,
    freeze,
    jupyter_server_pid,
    problems,
    readable,
    thaw,
    trail,
    wait_consistent,
)
from tests.helpers import Kernel, Proc, free_port, wait_for
from tests.stack import Stack, start_beat, start_redis, start_stack, start_worker
from tests.web import opened

pytestmark = pytest.mark.docker

RUNNING = {SessionStatus.RUNNING}
STOPPED = {SessionStatus.STOPPED}
OP = Actor.operator("fault-suite")
SWEEPS = {
    "deadline_sweep_interval_s": 1,
    "heartbeat_interval_s": 1,
    "reap_interval_s": 1,
    "reconcile_interval_s": 3,
    "resend_after_s": 3,
    "max_sessions": 12,
    "max_sessions_per_host": 12,
}
STACK_A = {
    **SWEEPS,
    "idle_timeout_s": 3600,
    "queued_deadline_s": 60,
    "starting_deadline_s": 60,
    "stopping_deadline_s": 30,
}
IDLE_B = 8.0
STACK_B = {
    **SWEEPS,
    "idle_timeout_s": IDLE_B,
    "queued_deadline_s": 20,
    "starting_deadline_s": 20,
    "stopping_deadline_s": 15,
}
OUTAGE_S = 8.0  # a short outage: well inside stack A's deadlines
MARGIN_S = 45.0  # what a shared, loaded machine may add to any deadline (bounds, not figures)
RECOVERY: list[tuple[str, str]] = []


@dataclass
class Faults:
    st: Stack
    relay: DockerRelay
    env: dict[str, str]
    beat: Proc
    redis: RestartableRedis | None = None
    restarts: list[Proc] = field(default_factory=list)

    def restart_worker(self) -> Proc:
        n = len(self.restarts) + 1
        log = self.st.workdir / f"worker-{n}.log"  # a new log: "ready." of the dead worker must not count
        self.st.worker = start_worker(self.st.settings, log, f"w{n}-{self.st.settings.instance}", env=self.env)
        self.restarts.append(self.st.worker)
        return self.st.worker


def _make(folder: Path, redis_url: str, settings: dict, redis: RestartableRedis | None) -> Faults:
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    relay = DockerRelay(folder / "docker-relay.sock").start()
    env = {"DOCKER_HOST": relay.docker_host}
    st = start_stack(folder / "stack", redis_url, client, worker_env=env, **settings)
    beat = start_beat(st.settings, st.workdir, "beat")
    return Faults(st, relay, env, beat, redis)


def _teardown(fx: Faults) -> None:
    fx.relay.clear()
    if fx.relay.cut_at is not None:
        fx.relay.restore()
    try:
        fx.st.stop_everything()
    except (AssertionError, LauncherError) as exc:  # still shut everything down
        print(f"\nteardown: {exc}")
    fx.beat.stop()
    fx.st.shutdown()
    fx.relay.close()


@pytest.fixture(scope="module")
def fx(workdir: Path) -> Iterator[Faults]:
    """Stack A: its own Redis with an append-only file, the worker behind a Docker relay, a real Beat."""
    folder = workdir / "faults-a"
    folder.mkdir(mode=0o755)
    proc, url = start_redis(folder, appendonly=True)
    redis = RestartableRedis(folder, proc, url)
    try:
        faults = _make(folder, url, STACK_A, redis)
        yield faults
        _teardown(faults)
    finally:
        redis.proc.stop()  # the current process: a restart replaces it


@pytest.fixture(scope="module")
def fxb(workdir: Path, redis_url: str) -> Iterator[Faults]:
    """Stack B: an 8 s idle timeout and deadlines of 15-20 s, on the test session's Redis, behind its own relay."""
    folder = workdir / "faults-b"
    folder.mkdir(mode=0o755)
    faults = _make(folder, redis_url, STACK_B, None)
    yield faults
    _teardown(faults)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print("\nfault suite: recovery")
    for fault, figure in RECOVERY:
        print(f"  {fault}: {figure}")


# -- helpers ----------------------------------------------------------------------------------------------------


def launch(fx: Faults, user: str) -> Session:
    return fx.st.service.launch(fx.st.actor(user), "alpha_research")


def get(fx: Faults, session: Session) -> Session:
    current = fx.st.store.get(session.id)
    assert current is not None, session.id
    return current


def launch_running(fx: Faults, *users: str, timeout: float = 120) -> list[Session]:
    """Launch for each user at once; returns the sessions once all run."""
    sessions = [launch(fx, user) for user in users]
    return [fx.st.service.wait(OP, s.id, RUNNING, timeout) for s in sessions]


def watch(
    fx: Faults,
    goals: dict[str, set[SessionStatus]],
    timeout: float,
    since: float,
    also: dict[str, Callable[[], bool]] | None = None,
) -> dict[str, float]:
    """Poll until every session reached a status of its goal (or ended) and every ``also`` predicate holds; returns
    when each did, in seconds since ``since`` (monotonic). A session that ends elsewhere than its goal is reported
    by the caller's asserts."""
    reached: dict[str, float] = {}
    also = also or {}

    def done() -> bool:
        for sid, goal in goals.items():
            if sid not in reached:
                s = fx.st.store.get(sid)
                if s is not None and (s.status in goal or s.status in ENDED):
                    reached[sid] = time.monotonic() - since
        for name, holds in also.items():
            if name not in reached and holds():
                reached[name] = time.monotonic() - since
        return len(reached) == len(goals) + len(also)

    try:
        wait_for(done, timeout, "the sessions to settle", interval=0.1)
    except AssertionError:
        left = {sid: fx.st.store.get(sid) for sid in goals if sid not in reached}
        waiting = [(s.user, s.status.value) for s in left.values() if s] + [n for n in also if n not in reached]
        raise AssertionError(f"not settled after {timeout} s: {waiting}") from None
    return reached


def story(fx: Faults, session: Session) -> str:
    """The session's audit actions, oldest first, as one line ("waiting queued starting running ...")."""
    return " ".join(action for action, *_ in trail(fx.st.store, session.id))


def assert_runs_in_one_container(fx: Faults, session: Session, container_id: str | None = None) -> Session:
    current = get(fx, session)
    assert current.status == SessionStatus.RUNNING, (current.user, current.status, current.error)
    containers = fx.st.containers(session=session.id)
    assert [c.status for c in containers] == ["running"], (current.user, [(c.name, c.status) for c in containers])
    assert containers[0].id == current.container_id
    if container_id is not None:
        assert current.container_id == container_id, f"{current.user}: not the container made before the fault"
    return current


def finish(fx: Faults, *sessions: Session) -> None:
    """Stop what is still live, then check the whole stack is consistent."""
    for s in sessions:
        current = get(fx, s)
        if current.status.live and current.status != SessionStatus.STOPPING:
            fx.st.service.stop(OP, session_id=s.id)
    for s in sessions:
        fx.st.service.wait(OP, s.id, ENDED, 60)
    wait_consistent(fx.st, 30)


def record(fault: str, figure: str) -> None:
    RECOVERY.append((fault, figure))
    print(f"\n{fault}: {figure}")


def plant_orphan(st: Stack) -> str:
    """A labelled container of this stack's host whose session Redis never knew (through the real engine)."""
    labels = {
        f"{LABEL_PREFIX}.instance": st.settings.instance,
        f"{LABEL_PREFIX}.host": st.settings.host_name,
        f"{LABEL_PREFIX}.session": "zzzzzzzzzzzz",
    }
    c = st.docker.containers.run(
        st.settings.notebook_image,
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        labels=labels,
        name=f"{st.settings.instance}-nb-zzzzzzzzzzzz",
    )
    return c.id


def container_path(fx: Faults, session: Session) -> str:
    return re.escape(container_name(fx.st.settings, session.id))


CREATE = r"^/containers/create\?"
START = r"^/containers/[0-9a-f]{64}/start$"


def pin_in_readiness_wait(fx: Faults, session: Session, at_start: Hold) -> tuple[int, Hold]:
    """Pin a start inside its readiness wait: its container starts, its Jupyter server is frozen at once (so it
    cannot answer), and the wait's first "is the container still running?" request is held at the relay.
    ``at_start`` was armed before the launch; returns the frozen server's PID (thaw it) and the held request."""
    at_start.wait(60)
    at_ready = fx.relay.hold("GET", rf"^/containers/{container_path(fx, session)}/json")
    fx.relay.release(at_start)
    name = container_name(fx.st.settings, session.id)

    def server() -> int | None:
        try:
            return jupyter_server_pid(fx.st.docker, name)
        except (ValueError, docker.errors.APIError):  # not started yet, or not exec'd into Python yet
            return None

    pid = wait_for(server, 30, "the Jupyter server process", interval=0.01)
    freeze(pid)
    at_ready.wait(30)
    return pid, at_ready


# -- Docker ------------------------------------------------------------------------------------------------------


def test_docker_unreachable_during_start_stop_heartbeat_and_reconcile(fx: Faults) -> None:
    """Docker cut for 8 s while a start waits at create, a start waits for Jupyter, a stop waits on Docker, Beat's
    reconcile lists containers and a container dies unseen: once it is back both starts run, the stop ends, the
    dead container is reported `died`, the orphan made meanwhile is removed, and the bystander was never touched."""
    st, relay = fx.st, fx.relay
    stopper, dying, keeper = launch_running(fx, "dk-stop", "dk-dies", "dk-keep")

    at_start = relay.hold("POST", START)
    ready = launch(fx, "dk-ready")
    server, _ = pin_in_readiness_wait(fx, ready, at_start)  # its Jupyter frozen: the wait spans the outage
    at_create = relay.hold("POST", CREATE)
    created = launch(fx, "dk-create")
    at_create.wait(60)
    at_stop = relay.hold("POST", rf"^/containers/{stopper.container_id}/stop")
    st.service.stop(st.actor("dk-stop"))
    at_stop.wait(30)
    at_list = relay.hold("GET", r"^/containers/json")  # Beat's next reconcile (every 3 s) waits on its list
    at_list.wait(15)

    relay.cut()
    st.docker.containers.get(container_name(st.settings, dying.id)).kill()  # dies while nobody can look
    orphan = plant_orphan(st)
    time.sleep(OUTAGE_S)
    during = {s.user: get(fx, s).status for s in (ready, created, stopper, dying, keeper)}
    assert during == {
        "dk-ready": SessionStatus.STARTING,
        "dk-create": SessionStatus.STARTING,
        "dk-stop": SessionStatus.STOPPING,
        "dk-dies": SessionStatus.RUNNING,  # unknown while Docker is away: not declared dead for that
        "dk-keep": SessionStatus.RUNNING,
    }, during

    relay.clear()
    relay.restore()
    back = time.monotonic()
    thaw(server)
    goals = {ready.id: RUNNING, created.id: RUNNING, stopper.id: STOPPED, dying.id: {SessionStatus.ERROR}}
    orphan_gone = {"orphan": lambda: container_of_id(st, orphan) is None}
    took = watch(fx, goals, STACK_A["starting_deadline_s"] + MARGIN_S, back, also=orphan_gone)

    assert_runs_in_one_container(fx, ready)
    assert_runs_in_one_container(fx, created)
    assert_runs_in_one_container(fx, keeper, keeper.container_id)
    ended = get(fx, stopper)
    assert ended.status == SessionStatus.STOPPED and ended.stop_reason == "user", ended
    dead = get(fx, dying)
    assert dead.status == SessionStatus.ERROR and dead.stop_reason == "died" and readable(dead.error), dead
    wait_consistent(st, 30)

    assert story(fx, ready) == "waiting queued starting running"
    assert story(fx, created) == "waiting queued starting running"
    assert story(fx, keeper) == "waiting queued starting running"
    stop_trail = trail(st.store, stopper.id)
    assert [a for a, *_ in stop_trail] == ["waiting", "queued", "starting", "running", "stopping", "stopped"], stop_trail
    assert stop_trail[4][2:] == ("user:dk-stop", "user") and stop_trail[5][3] == "user", stop_trail
    die_trail = trail(st.store, dying.id)
    assert [a for a, *_ in die_trail] == ["waiting", "queued", "starting", "running", "error"]
    assert die_trail[-1][3] == "died"
    assert relay.seen("POST", CREATE, since=back), "the held create was retried once Docker returned"
    assert "runtime.unknown" in st.worker.log.read_text(errors="replace")  # the readiness wait asked, in vain

    record("Docker cut during start (at create)", f"running {took[created.id]:.1f} s after Docker returned")
    record("Docker cut during start (readiness wait)", f"running {took[ready.id]:.1f} s after Docker returned "
           "(and its frozen Jupyter was let go)")
    record("Docker cut during stop", f"stopped {took[stopper.id]:.1f} s after Docker returned")
    record("Docker cut during heartbeat (container died unseen)", f"error/died {took[dying.id]:.1f} s after return")
    record("Docker cut during reconcile (orphan made meanwhile)", f"orphan removed {took['orphan']:.1f} s after return")
    finish(fx, ready, created, keeper)


def container_of_id(st: Stack, container_id: str):  # noqa: ANN201
    try:
        return st.docker.containers.get(container_id)
    except docker.errors.NotFound:
        return None


# -- Redis -------------------------------------------------------------------------------------------------------


def test_redis_restarted_during_start_and_stop(fx: Faults) -> None:
    """Redis stopped and started again from its append-only file while a start and a stop are mid-flight (their
    next writes meet the outage): a launch meanwhile is refused with a clear message, nothing recorded is lost, the
    start ends running and the stop stopped."""
    st, relay, rds = fx.st, fx.relay, fx.redis
    assert rds is not None
    [stopper] = launch_running(fx, "rd-stop")
    at_create = relay.hold("POST", CREATE)
    starting = launch(fx, "rd-start")
    at_create.wait(60)
    at_stop = relay.hold("POST", rf"^/containers/{stopper.container_id}/stop")
    st.service.stop(st.actor("rd-stop"))
    at_stop.wait(30)
    audit_before = {e.id for e in st.store.audit(limit=5000)}

    rds.stop()
    down = time.monotonic()
    with pytest.raises(RuntimeUnavailable) as refused:
        st.service.launch(st.actor("rd-late"), "alpha_research")
    seen = refused.value.user_message
    assert readable(seen) and "try again" in seen, seen
    relay.clear()  # the start and the stop go on; their next writes to Redis fail
    time.sleep(4)
    rds.start()
    back = time.monotonic()

    assert audit_before <= {e.id for e in st.store.audit(limit=5000)}  # the append-only file kept everything
    assert st.worker.alive(), st.worker.tail()  # it lost its broker and came back (workers.app.Consumer)
    assert get(fx, stopper).status.live and get(fx, starting).status.live
    goals = {starting.id: RUNNING, stopper.id: STOPPED}
    took = watch(fx, goals, STACK_A["starting_deadline_s"] + MARGIN_S, back)
    assert_runs_in_one_container(fx, starting)
    ended = get(fx, stopper)
    assert ended.status == SessionStatus.STOPPED and ended.stop_reason == "user", ended
    assert st.store.latest_session_for("rd-late") is None  # the refused launch left nothing
    wait_consistent(st, 30)
    assert re.fullmatch(r"waiting queued( starting)+ running", story(fx, starting)), story(fx, starting)
    assert story(fx, stopper) == "waiting queued starting running stopping stopped"

    record("Redis restarted during start", f"launch refused meanwhile ({seen!r}); running {took[starting.id]:.1f} s "
           f"after Redis returned (down {back - down:.1f} s)")
    record("Redis restarted during stop", f"stopped {took[stopper.id]:.1f} s after Redis returned")
    finish(fx, starting)


# -- the broker ---------------------------------------------------------------------------------------------------


def test_broker_unreachable_when_the_console_enqueues(fx: Faults) -> None:
    """The console's broker is unreachable: a launch fails within seconds with a clear error and leaves no seat or
    lock (the user launches again at once once it answers); a stop is accepted, and the deadline sweep sends it
    again, so the session still ends within the stopping deadline."""
    st = fx.st
    closed = f"redis://:{secrets.token_urlsafe(8)}@127.0.0.1:{free_port()}/0"
    console = LauncherService(st.settings, st.store, CeleryDispatcher.from_settings(
        st.settings.model_copy(update={"redis_url": closed})))
    [running] = launch_running(fx, "br-stop")

    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailable) as failed:
        console.launch(st.actor("br-launch"), "alpha_research")
    failed_s = time.monotonic() - t0
    seen = failed.value.user_message
    assert failed_s < 15 and readable(seen) and "task queue" in seen, (failed_s, seen)
    lost = st.store.latest_session_for("br-launch")
    assert lost is not None and lost.status == SessionStatus.ERROR and lost.error == seen
    assert lost.stop_reason == "dispatch_failed" and st.store.live_session_for("br-launch") is None
    assert trail(st.store, lost.id) == [
        ("waiting", "", "user:br-launch", "launch"),
        ("queued", "waiting", "launcher", "admitted"),
        ("error", "queued", "launcher", "dispatch_failed"),
    ]
    assert not problems(st), problems(st)  # no seat, no lock

    t1 = time.monotonic()
    stopping = console.stop(st.actor("br-stop"))
    assert stopping.status == SessionStatus.STOPPING  # what the user sees at once
    ended = st.service.wait(OP, running.id, ENDED, STACK_A["stopping_deadline_s"] + MARGIN_S)
    stop_s = time.monotonic() - t1
    assert ended.status == SessionStatus.STOPPED and ended.stop_reason == "user", ended
    assert st.containers(session=running.id) == []
    assert "resend_stop" in st.worker.log.read_text(errors="replace")  # the sweep sent it again
    assert story(fx, running) == "waiting queued starting running stopping stopped"

    [again] = launch_running(fx, "br-launch")  # the lock and the seat really are free
    assert again.id != lost.id
    record("broker unreachable at launch", f"error at once ({failed_s:.1f} s): {seen!r}; no seat or lock left")
    record("broker unreachable at stop", f"'stopping', then stopped {stop_s:.1f} s later (the sweep resent it)")
    finish(fx, again)


# -- the worker ---------------------------------------------------------------------------------------------------


def test_worker_killed_at_five_points_then_restarted(fx: Faults) -> None:
    """The worker SIGKILLed with one session at each point (queued with no worker, created but not started, just
    started, waiting for Jupyter, stopping), then started again: four run, each in the one container made before
    the kill, the stop ends, and no container, seat or lock is left over."""
    st, relay = fx.st, fx.relay
    [stopper] = launch_running(fx, "kw-stop")

    at_start = relay.hold("POST", START)
    ready = launch(fx, "kw-ready")
    server, _ = pin_in_readiness_wait(fx, ready, at_start)
    at_create = relay.hold("POST", CREATE)
    created = launch(fx, "kw-create")
    at_create.wait(60)
    at_start = relay.hold("POST", START)
    relay.release(at_create)
    at_start.wait(30)
    made = container_of(st, created.id)
    assert made is not None and made.status == "created"
    at_stop = relay.hold("POST", rf"^/containers/{stopper.container_id}/stop")
    st.service.stop(st.actor("kw-stop"))
    at_stop.wait(30)
    started = launch(fx, "kw-started")
    wait_for(lambda: (c := container_of(st, started.id)) is not None and c.status == "running", 60,
             "the container to start", interval=0.02)
    st.worker.kill()
    before = {s.user: container_of(st, s.id) for s in (ready, created, started)}
    assert all(before.values()), before

    queued = launch(fx, "kw-queued")  # no worker is running
    time.sleep(2)
    states = {s.user: get(fx, s).status for s in (queued, created, started, ready, stopper)}
    assert states == {
        "kw-queued": SessionStatus.QUEUED,
        "kw-create": SessionStatus.STARTING,
        "kw-started": SessionStatus.STARTING,
        "kw-ready": SessionStatus.STARTING,
        "kw-stop": SessionStatus.STOPPING,
    }, states

    relay.clear()
    thaw(server)
    t0 = time.monotonic()
    fx.restart_worker()
    goals = {s.id: RUNNING for s in (queued, created, started, ready)} | {stopper.id: STOPPED}
    took = watch(fx, goals, STACK_A["starting_deadline_s"] + MARGIN_S, t0)
    assert_runs_in_one_container(fx, queued)
    for s in (created, started, ready):
        assert_runs_in_one_container(fx, s, before[s.user].id)
    ended = get(fx, stopper)
    assert ended.status == SessionStatus.STOPPED and ended.stop_reason == "user", ended
    wait_consistent(st, 30)
    for s in (queued, created, started, ready):
        assert re.fullmatch(r"waiting queued( starting)+ running", story(fx, s)), (s.user, story(fx, s))
    assert story(fx, stopper) == "waiting queued starting running stopping stopped"

    for s, point in ((queued, "after reserve"), (created, "after create"), (started, "after container start"),
                     (ready, "during the readiness wait"), (stopper, "during stop")):
        record(f"worker SIGKILLed {point}", f"{get(fx, s).status.value} {took[s.id]:.1f} s after the worker was "
               "started again (its boot included)")
    finish(fx, queued, created, started, ready)


# -- stack B: long outages, idle reaping ----------------------------------------------------------------------------


def test_docker_unreachable_past_the_deadlines(fxb: Faults) -> None:
    """Docker cut for longer than the starting and stopping deadlines: the start ends in error with a message its
    owner can read and the stop ends stopped, both while Docker is still away (seats and locks freed); the
    container the stop could not remove is removed once Docker returns."""
    st, relay = fxb.st, fxb.relay
    [stopper] = launch_running(fxb, "lo-stop")
    at_create = relay.hold("POST", CREATE)
    starting = launch(fxb, "lo-start")
    at_create.wait(60)
    at_stop = relay.hold("POST", rf"^/containers/{stopper.container_id}/stop")
    st.service.stop(st.actor("lo-stop"))
    at_stop.wait(30)

    relay.cut()
    cut = time.monotonic()
    took = watch(fxb, {starting.id: ENDED, stopper.id: ENDED}, STACK_B["starting_deadline_s"] + MARGIN_S, cut)
    failed, stopped = get(fxb, starting), get(fxb, stopper)
    assert failed.status == SessionStatus.ERROR and readable(failed.error), failed
    assert failed.stop_reason in ("start_failed", "start_timeout"), failed
    assert stopped.status == SessionStatus.STOPPED and stopped.stop_reason == "user", stopped
    for s in (failed, stopped):
        assert st.store.live_session_for(s.user) is None  # the user may launch again
        assert s.id not in st.store.redis.smembers(f"{st.settings.instance}:host:local:live")
    assert container_of(st, stopper.id) is not None  # still there: nobody could remove it yet
    stop_note = trail(st.store, stopper.id)[-1]
    assert stop_note[0] == "stopped", stop_note
    detail = [e.detail for e in st.store.audit(limit=500) if e.session_id == stopper.id and e.action == "stopped"]
    assert detail and readable(detail[0]), detail

    relay.clear()
    relay.restore()
    back = time.monotonic()
    wait_consistent(st, 30, "the leftovers to be removed")
    cleaned = time.monotonic() - back
    assert story(fxb, starting) == "waiting queued starting error"
    assert story(fxb, stopper) == "waiting queued starting running stopping stopped"

    record("Docker cut past the starting deadline", f"error after {took[starting.id]:.1f} s of outage: "
           f"{failed.error!r}")
    record("Docker cut past the stopping deadline", f"stopped after {took[stopper.id]:.1f} s of outage "
           f"({detail[0]!r}); container removed {cleaned:.1f} s after Docker returned")


def test_frozen_jupyter_server_with_a_busy_kernel_is_reaped_when_idle(fxb: Faults) -> None:
    """A Jupyter server frozen (SIGSTOP) while its kernel was busy: the heartbeat records no busy kernel and does not
    hang (another busy session keeps being recorded), and the frozen session is reaped after the idle timeout."""
    st = fxb.st
    frozen, busy = launch_running(fxb, "fz-frozen", "fz-busy")
    clients = {s.id: opened(st, s.id, s.user) for s in (frozen, busy)}
    kernels = {sid: Kernel(c) for sid, c in clients.items()}
    cells = []
    for kernel in kernels.values():
        cell = threading.Thread(target=_run_quietly, args=(kernel, "import time; time.sleep(120)"), daemon=True)
        cell.start()
        cells.append(cell)
    wait_for(lambda: all(get(fxb, s).kernels_busy == 1 for s in (frozen, busy)), 30, "both kernels busy")

    pid = jupyter_server_pid(st.docker, container_name(st.settings, frozen.id))
    freeze(pid)
    frozen_at = time.monotonic()
    frozen_wall = get(fxb, frozen).last_activity_at
    try:
        wait_for(lambda: get(fxb, frozen).kernels_busy == 0, 20, "the heartbeat to record no busy kernel")
        unbusy_s = time.monotonic() - frozen_at
        ended = st.service.wait(OP, frozen.id, ENDED, IDLE_B + MARGIN_S)
        reaped_s = time.monotonic() - frozen_at
        assert ended.status == SessionStatus.STOPPED and ended.stop_reason == "idle", ended
        assert (ended.stopped_at - ended.last_activity_at).total_seconds() >= IDLE_B
        assert st.containers(session=frozen.id) == []
        other = get(fxb, busy)  # the sweep did not hang on the frozen server
        assert other.status == SessionStatus.RUNNING and other.kernels_busy == 1, other
        assert frozen_wall is not None and other.last_activity_at > frozen_wall
    finally:
        thaw(pid)
        for kernel in kernels.values():
            kernel.ws.close()
        for c in clients.values():
            c.close()
    for cell in cells:
        cell.join(30)
    trail_ = trail(st.store, frozen.id)
    assert [a for a, *_ in trail_] == ["waiting", "queued", "starting", "running", "stopping", "stopped"], trail_
    assert trail_[4][2:] == ("reaper", "idle") and trail_[5][3] == "idle", trail_
    record("Jupyter server frozen with a busy kernel", f"no busy kernel recorded {unbusy_s:.1f} s after the freeze; "
           f"reaped (stopped, idle) {reaped_s:.1f} s after it (idle timeout {IDLE_B:.0f} s)")
    finish(fxb, busy)


def _run_quietly(kernel: Kernel, code: str) -> None:
    """Run a cell whose session may be frozen or stopped under it (its end is not what the test checks)."""
    try:
        kernel.execute(code, timeout=150)
    except Exception as exc:  # noqa: BLE001 - a closed socket or a timeout, as expected
        print(f"cell ended: {type(exc).__name__}")
