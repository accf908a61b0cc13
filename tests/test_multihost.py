"""Two Docker hosts for real (issue 11): each with its own worker, queue, entry point and Docker engine.

Host ``alpha`` is this machine's engine; host ``beta`` is a second ``dockerd`` (tests/engines.py) with its own
data root and socket. Both share one Redis, as every host of an installation does. Beta offers less memory than
alpha, so the ``large`` profile fits only on alpha.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from launcher.adapters.docker_runtime import DockerRuntime
from launcher.errors import LauncherError
from launcher.models import Actor, HostState, Role, SessionStatus
from launcher.settings import Settings
from launcher.spec import container_name
from tests.engines import SecondEngine
from tests.helpers import Proc, free_port, wait_for
from tests.stack import Stack, start_entrypoint, start_stack, start_worker, unmount_below

pytestmark = pytest.mark.docker
GIB = 2**30
RUNNING = {SessionStatus.RUNNING}
ADMIN = Actor(name="mh-admin", role=Role.ADMIN)


@dataclass
class Host:
    settings: Settings
    worker: Proc
    nginx: Proc
    client: docker.DockerClient
    env: dict[str, str]

    def restart_worker(self, folder: Path) -> None:
        self.worker = start_worker(self.settings, folder / f"{self.settings.host_name}-worker.log",
                                   f"w-{self.settings.instance}-{self.settings.host_name}", env=self.env)


@dataclass
class TwoHosts:
    alpha: Stack
    beta: Host
    folder: Path

    @property
    def service(self):  # noqa: ANN201 - the alpha stack's service (any process may act for the installation)
        return self.alpha.service

    def engine(self, host: str) -> docker.DockerClient:
        return self.alpha.docker if host == "alpha" else self.beta.client

    def launch(self, user: str, profile: str | None = None, role: Role = Role.RESEARCHER):  # noqa: ANN201
        actor = Actor(name=user, role=role)
        session = self.service.launch(actor, "alpha_research", profile=profile)
        return self.service.wait(ADMIN, session.id, RUNNING, 120)


def _hosts_state(stack: Stack) -> dict[str, HostState]:
    return {h.name: h.state for h in stack.store.hosts()}


@pytest.fixture(scope="module")
def two_hosts(second_engine: SecondEngine, tmp_path_factory, redis_url) -> Iterator[TwoHosts]:
    folder = tmp_path_factory.mktemp("multihost")
    second_engine.load_image("launcher-notebook:latest")
    machine = docker.from_env()
    engine_mem = int(machine.info()["MemTotal"])
    fast = {"host_beacon_interval_s": 0.5, "host_down_after_s": 4.0, "max_sessions": 10, "max_sessions_per_host": 4}
    alpha = start_stack(folder / "alpha", redis_url, machine, host_name="alpha", **fast)
    # beta keeps back all its memory but 2.5 GiB: room for two 1 GiB sessions, never for a 2 GiB one next to one
    reserve = f"{(engine_mem - int(2.5 * GIB)) // 2**20}m"
    port = free_port()
    beta_settings = alpha.settings.model_copy(
        update={
            "host_name": "beta",
            "host_reserve_mem": reserve,
            "public_url": f"http://nb.localhost:{port}",
            "entrypoint_listen": f"127.0.0.1:{port}",
            "sessions_dir": folder / "beta" / "sessions",
            "workspaces_dir": folder / "beta" / "workspaces",
            "workspace_images_dir": folder / "beta" / "workspace-images",
        }
    )
    beta_settings.sessions_dir.mkdir(parents=True, mode=0o711)
    env = {"DOCKER_HOST": second_engine.docker_host}
    nginx = start_entrypoint(beta_settings, folder / "beta" / "nginx")
    worker = start_worker(beta_settings, folder / "beta-worker.log", f"w-{beta_settings.instance}-beta", env=env)
    beta = Host(beta_settings, worker, nginx, second_engine.client(), env)
    wait_for(lambda: _hosts_state(alpha).get("beta") == HostState.UP, 60, "beta to register")
    hosts = TwoHosts(alpha, beta, folder)
    try:
        yield hosts
    finally:
        with contextlib.suppress(Exception):
            alpha.stop_everything()
        for container in beta.client.containers.list(all=True):
            container.remove(force=True)
        beta.worker.stop()
        beta.nginx.stop()
        alpha.shutdown()
        unmount_below(folder)


@pytest.fixture
def hosts(two_hosts: TwoHosts) -> Iterator[TwoHosts]:
    yield two_hosts
    with contextlib.suppress(LauncherError):
        for info in two_hosts.alpha.store.hosts():
            two_hosts.alpha.store.set_draining(info.name, False)
    two_hosts.alpha.stop_everything()


def test_each_host_advertises_its_room_and_placement_follows_it(hosts: TwoHosts) -> None:
    """Both hosts registered themselves with what their engines offer; a large session goes where it fits, and
    its profile's limits are what the container gets on that engine."""
    info = {h.name: h for h in hosts.alpha.store.hosts()}
    assert info["alpha"].state == info["beta"].state == HostState.UP
    assert info["alpha"].engine_cpus == info["beta"].engine_cpus > 0  # one machine, two engines
    assert info["beta"].mem_bytes < 3 * GIB < info["alpha"].mem_bytes

    big = hosts.launch("mh-ada", profile="large", role=Role.ADMIN)  # 2 CPUs, 2 GiB: only alpha has the room
    assert big.status == SessionStatus.RUNNING and big.host == "alpha"
    attrs = hosts.engine("alpha").containers.get(container_name(hosts.alpha.settings, big.id)).attrs["HostConfig"]
    assert (attrs["NanoCpus"], attrs["Memory"], attrs["PidsLimit"]) == (2 * 10**9, 2 * GIB, 512)

    small = hosts.launch("mh-bea")  # 1 CPU, 1 GiB: beta has the most room left now, relative to what it offers
    assert small.host in {"alpha", "beta"}
    on = hosts.engine(small.host)
    attrs = on.containers.get(container_name(hosts.alpha.settings, small.id)).attrs["HostConfig"]
    assert (attrs["NanoCpus"], attrs["Memory"]) == (10**9, GIB)
    other = "beta" if small.host == "alpha" else "alpha"
    with pytest.raises(docker.errors.NotFound):  # each engine runs only what was placed on it
        hosts.engine(other).containers.get(container_name(hosts.alpha.settings, small.id))
    used = {h.name: h.used_mem_bytes for h in hosts.alpha.store.hosts()}
    assert used[small.host] >= GIB and used["alpha"] >= 2 * GIB


def test_stop_and_heartbeat_reach_the_owning_host(hosts: TwoHosts) -> None:
    """A session on beta is stopped by beta's worker on beta's engine; Beat's fan-out reaches both hosts."""
    hosts.alpha.store.set_draining("alpha", True)  # this launch must land on beta
    on_beta = hosts.launch("mh-cal")
    hosts.alpha.store.set_draining("alpha", False)
    assert on_beta.host == "beta"
    name = container_name(hosts.alpha.settings, on_beta.id)
    assert hosts.beta.client.containers.get(name).status == "running"

    producer = hosts.service.dispatcher.app  # the fan-out Beat sends, sent once by hand
    producer.send_task("workers.tasks.fan_out", args=["heartbeat", 60], queue=hosts.alpha.settings.control_queue,
                       ignore_result=True)
    beta_log = hosts.beta.worker.log
    wait_for(lambda: "workers.tasks.heartbeat" in beta_log.read_text() and "'running': 1" in beta_log.read_text(),
             60, "beta's heartbeat")

    stopped = hosts.service.stop(ADMIN, session_id=on_beta.id)
    stopped = hosts.service.wait(ADMIN, stopped.id, {SessionStatus.STOPPED}, 60)
    assert stopped.status == SessionStatus.STOPPED
    assert "stop_session[" in beta_log.read_text()
    wait_for(lambda: not hosts.beta.client.containers.list(all=True, filters={"name": name}), 30, "beta's container")


def test_a_host_whose_worker_dies_is_down_then_reconciled(hosts: TwoHosts) -> None:
    """beta's worker killed: beta goes down, its session shows "host unreachable" and is not reaped, launches go to
    alpha; beta's worker back: beta is up, its session runs on, unchanged."""
    hosts.alpha.store.set_draining("alpha", True)
    on_beta = hosts.launch("mh-dov")
    hosts.alpha.store.set_draining("alpha", False)
    assert on_beta.host == "beta"

    hosts.beta.worker.kill()  # no goodbye: only the silence tells
    wait_for(lambda: _hosts_state(hosts.alpha).get("beta") == HostState.DOWN, 30, "beta to be down")
    view = next(v for v in hosts.service.session_views(ADMIN) if v.id == on_beta.id)
    assert view.host_down and view.state_text == "host unreachable"
    elsewhere = hosts.launch("mh-eli")
    assert elsewhere.host == "alpha"
    assert hosts.beta.client.containers.get(container_name(hosts.alpha.settings, on_beta.id)).status == "running"

    hosts.beta.restart_worker(hosts.folder)
    wait_for(lambda: _hosts_state(hosts.alpha).get("beta") == HostState.UP, 60, "beta to be back")
    back = hosts.alpha.store.get(on_beta.id)
    assert back.status == SessionStatus.RUNNING and back.host == "beta"
    view = next(v for v in hosts.service.session_views(ADMIN) if v.id == on_beta.id)
    assert not view.host_down and view.state_text == "running"


def test_a_worker_that_stops_says_so_and_drain_sends_launches_elsewhere(hosts: TwoHosts) -> None:
    """A worker stopped on purpose marks its host down at once; a drained host takes no launch but keeps its own;
    launches wait in the queue while no host has room and are admitted when one returns."""
    running = hosts.launch("mh-fay")
    hosts.alpha.store.set_draining(running.host, True)
    other = "beta" if running.host == "alpha" else "alpha"
    second = hosts.launch("mh-gus")
    assert second.host == other
    assert hosts.alpha.store.get(running.id).status == SessionStatus.RUNNING  # drained, not stopped
    hosts.alpha.store.set_draining(running.host, False)

    hosts.beta.worker.stop()  # SIGTERM: a clean shutdown retires the host at once
    wait_for(lambda: _hosts_state(hosts.alpha).get("beta") == HostState.DOWN, 10, "beta to retire")
    hosts.alpha.store.set_draining("alpha", True)  # and alpha takes none: nothing has room
    waiting = hosts.service.launch(Actor(name="mh-hal", role=Role.RESEARCHER), "alpha_research")
    assert waiting.status == SessionStatus.WAITING and hosts.alpha.store.queue_position(waiting) == 1
    time.sleep(1.0)
    assert hosts.alpha.store.get(waiting.id).status == SessionStatus.WAITING
    hosts.beta.restart_worker(hosts.folder)  # beta returns: its room admits the waiting launch
    admitted = hosts.service.wait(ADMIN, waiting.id, RUNNING, 120)
    assert admitted.status == SessionStatus.RUNNING and admitted.host == "beta"
    runtime = DockerRuntime(hosts.beta.client)
    assert runtime.state(container_name(hosts.alpha.settings, waiting.id)).value == "running"
