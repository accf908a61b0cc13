"""The runtime port in memory: for fast tests of lifecycle logic (not of isolation). The contract suite
(tests/test_runtime_contract.py) runs the same cases against it and the Docker engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from launcher.errors import RuntimeUnavailable
from launcher.ports import LOG_MAX_BYTES, ContainerState, EngineCapacity, Handle, ManagedContainer
from launcher.spec import LABEL_PREFIX


@dataclass
class _FakeContainer:
    id: str
    name: str
    labels: dict[str, str]
    state: ContainerState


class FakeRuntime:
    """An in-memory ``Runtime`` for fast tests of lifecycle logic (not of isolation)."""

    def __init__(self) -> None:
        self.containers: dict[str, _FakeContainer] = {}
        self.output: dict[str, str] = {}  # what a container "printed", by name
        self.fail_next_start: Exception | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self.engine = EngineCapacity(cpus=16, mem_bytes=64 * 2**30)
        self.exit_codes: dict[str, int] = {}  # a container that "exits" with this status when waited on

    def capacity(self) -> EngineCapacity:
        return self.engine

    def start(self, spec: dict[str, Any]) -> Handle:
        with self._lock:
            if self.fail_next_start is not None:
                exc, self.fail_next_start = self.fail_next_start, None
                raise exc
            name = spec["name"]
            existing = self.containers.get(name)
            if existing is not None:
                existing.state = ContainerState.RUNNING
                return Handle(id=existing.id, name=name, adopted=True)
            self._seq += 1
            cid = f"fake{self._seq:060d}"
            self.containers[name] = _FakeContainer(cid, name, dict(spec["labels"]), ContainerState.RUNNING)
            return Handle(id=cid, name=name)

    def claim(self, name: str, new_name: str, cpu_shares: int) -> Handle:
        with self._lock:
            container = self.containers.pop(name)
            container.name = new_name
            self.containers[new_name] = container
        return Handle(id=container.id, name=new_name)

    def image_of(self, name: str) -> tuple[str, dict[str, str]]:
        return "", {}

    def image_id(self, ref: str) -> str:
        raise RuntimeUnavailable("the in-memory runtime has no images")

    def image_archive(self, ref: str, path: str, owner: str = "") -> Iterator[bytes]:
        raise RuntimeUnavailable("the in-memory runtime has no images")

    def archives(self) -> dict[str, str]:
        return {}

    def state(self, name: str) -> ContainerState:
        container = self.containers.get(name)
        return container.state if container else ContainerState.MISSING

    def stop(self, name: str, timeout: int = 10) -> None:
        with self._lock:
            self.containers.pop(name, None)

    def list_managed(self, instance: str) -> list[ManagedContainer]:
        return [
            ManagedContainer(c.id, c.name, c.state, dict(c.labels))
            for c in self.containers.values()
            if c.labels.get(f"{LABEL_PREFIX}.instance") == instance
        ]

    def logs(self, name: str, tail: int = 40) -> str:
        lines = self.output.get(name, "").splitlines()[-max(1, tail) :]
        return "\n".join(lines)[-LOG_MAX_BYTES:]

    def wait(self, name: str, timeout: float) -> int | None:
        container = self.containers.get(name)
        if container is None:
            return None
        code = self.exit_codes.get(name)
        if code is not None:
            container.state = ContainerState.EXITED
        return code

    def list_labelled(self, label: str) -> list[ManagedContainer]:
        key, _, value = label.partition("=")
        return [
            ManagedContainer(c.id, c.name, c.state, dict(c.labels))
            for c in self.containers.values()
            if c.labels.get(key) == value
        ]
