"""One contract, two runtimes: the same cases against the real Docker engine and the in-memory fake.

The lifecycle tests that use the fake are only as good as its likeness to Docker; these cases pin that
likeness down (start, adopt, state, stop, list, exit), so a behaviour the fake gets wrong fails here.
"""

from __future__ import annotations

import pytest

from launcher.adapters.docker_runtime import DockerRuntime
from launcher.adapters.memory_runtime import FakeRuntime
from launcher.ports import ContainerState
from launcher.spec import LABEL_PREFIX
from tests.conftest import IMAGE, docker_or_skip
from tests.stack import random_instance


class DockerDriver:
    """The real engine: tiny containers of the notebook image that sleep (no network, no Jupyter)."""

    def __init__(self) -> None:
        self.client = docker_or_skip()
        self.runtime = DockerRuntime(self.client)

    def spec(self, instance: str, name: str) -> dict:
        return {
            "image": IMAGE,
            "name": name,
            "command": ["sleep", "300"],
            "labels": {f"{LABEL_PREFIX}.instance": instance, f"{LABEL_PREFIX}.session": name[-12:]},
            "network_mode": "none",
            "user": "59000:59000",
            "read_only": True,
            "cap_drop": ["ALL"],
        }

    def kill(self, name: str) -> None:
        self.client.containers.get(name).kill()
        self.client.containers.get(name).wait(timeout=30)

    def cleanup(self, instance: str) -> None:
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_PREFIX}.instance={instance}"}):
            c.remove(force=True)


class FakeDriver:
    def __init__(self) -> None:
        self.runtime = FakeRuntime()

    def spec(self, instance: str, name: str) -> dict:
        return {"name": name, "labels": {f"{LABEL_PREFIX}.instance": instance, f"{LABEL_PREFIX}.session": name[-12:]}}

    def kill(self, name: str) -> None:
        self.runtime.containers[name].state = ContainerState.EXITED

    def cleanup(self, instance: str) -> None:
        self.runtime.containers.clear()


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), "memory"])
def driver(request):
    d = DockerDriver() if request.param == "docker" else FakeDriver()
    instance = random_instance()
    d.instance = instance
    yield d
    d.cleanup(instance)


def test_start_runs_and_a_second_start_adopts(driver):
    """start() runs a new container; starting the same name again adopts it instead of making another."""
    name = f"{driver.instance}-nb-aaaaaaaaaaaa"
    first = driver.runtime.start(driver.spec(driver.instance, name))
    assert not first.adopted and first.name == name
    assert driver.runtime.state(name) == ContainerState.RUNNING
    again = driver.runtime.start(driver.spec(driver.instance, name))
    assert again.adopted and again.id == first.id
    assert [c.name for c in driver.runtime.list_managed(driver.instance)] == [name]


def test_stop_removes_and_is_idempotent(driver):
    """stop() removes a container; stopping it again, or a name never started, is not an error."""
    name = f"{driver.instance}-nb-bbbbbbbbbbbb"
    driver.runtime.start(driver.spec(driver.instance, name))
    driver.runtime.stop(name, timeout=0)
    assert driver.runtime.state(name) == ContainerState.MISSING
    driver.runtime.stop(name, timeout=0)
    driver.runtime.stop(f"{driver.instance}-nb-neverstarted", timeout=0)
    assert driver.runtime.list_managed(driver.instance) == []


def test_exited_container_reports_exited_and_lists_with_labels(driver):
    """A container that exits by itself reports EXITED; list_managed returns only this instance's, with labels."""
    name = f"{driver.instance}-nb-cccccccccccc"
    driver.runtime.start(driver.spec(driver.instance, name))
    driver.kill(name)
    assert driver.runtime.state(name) == ContainerState.EXITED
    [listed] = driver.runtime.list_managed(driver.instance)
    assert listed.name == name and listed.state == ContainerState.EXITED and listed.session_id == "cccccccccccc"
    assert driver.runtime.list_managed(random_instance()) == []


@pytest.mark.docker
def test_a_container_removed_while_the_engine_lists_is_left_out_not_an_error():
    """docker-py lists containers, then inspects each: a container removed in between (by a second reconcile, or a
    stop) must be left out of the list, not fail it. CI saw a reconcile raise "the Docker engine refused the
    notebook container" from exactly this."""
    d = DockerDriver()
    instance = random_instance()
    keep, gone = f"{instance}-nb-dddddddddddd", f"{instance}-nb-eeeeeeeeeeee"
    try:
        d.runtime.start(d.spec(instance, keep))
        d.runtime.start(d.spec(instance, gone))
        engine_list = d.client.api.containers

        def list_then_remove(*args, **kwargs):
            answer = engine_list(*args, **kwargs)
            d.client.api.remove_container(gone, force=True)  # removed after the list, before the inspect
            return answer

        d.client.api.containers = list_then_remove
        try:
            listed = d.runtime.list_managed(instance)
        finally:
            d.client.api.containers = engine_list
        assert [c.name for c in listed] == [keep]
    finally:
        d.cleanup(instance)
