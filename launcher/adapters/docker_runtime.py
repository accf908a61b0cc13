"""The Docker boundary: a small typed interface, one real implementation, one in-memory fake.

    start(spec) -> Handle          create (or adopt, if a container of that name exists) and start
    state(name) -> ContainerState  RUNNING, EXITED, OOM_KILLED, MISSING, ... (never a bare None)
    stop(name)                     stop and remove; a missing container is not an error
    list_managed(instance)         every container labelled as ours on this engine

docker-py errors are translated here: an unreachable engine is ``RuntimeUnavailable``; a missing
image or a refused create is ``StartFailed`` with a message an operator can act on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests

from launcher.errors import RuntimeUnavailable, StartFailed
from launcher.ports import LOG_MAX_BYTES, ContainerState, EngineCapacity, Handle, ManagedContainer
from launcher.spec import ARCHIVE_LABEL, LABEL_PREFIX


def _state_of(attrs: dict[str, Any]) -> ContainerState:
    st = attrs.get("State") or {}
    if st.get("Running"):
        return ContainerState.RUNNING
    if st.get("OOMKilled"):
        return ContainerState.OOM_KILLED
    status = st.get("Status")
    if status == "created":
        return ContainerState.CREATED
    if status in {"exited", "dead"}:
        return ContainerState.EXITED
    return ContainerState.UNKNOWN


@contextlib.contextmanager
def _docker_errors() -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise StartFailed(
            "the notebook image is missing on this Docker host; an operator must run scripts/build-images.sh",
            f"image not found: {exc.explanation}",
        ) from None
    except docker.errors.APIError as exc:
        raise StartFailed("the Docker engine refused the notebook container", f"docker: {exc.explanation}") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise RuntimeUnavailable(
            "the Docker engine on this host is not reachable", f"docker unreachable: {exc!r}"
        ) from None


class DockerRuntime:
    """``Runtime`` on a real Docker engine through docker-py."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._given = client
        self._lazy: docker.DockerClient | None = None

    @property
    def _client(self) -> docker.DockerClient:
        """Connected on first use (inside each method's error translation), so a process can start, and
        a task begin, while the engine is unreachable; the call then fails with ``RuntimeUnavailable``."""
        if self._given is not None:
            return self._given
        if self._lazy is None:
            self._lazy = docker.from_env(timeout=30)
        return self._lazy

    def capacity(self) -> EngineCapacity:
        with _docker_errors():
            info = self._client.info()
        return EngineCapacity(cpus=int(info.get("NCPU", 0)), mem_bytes=int(info.get("MemTotal", 0)))

    def start(self, spec: dict[str, Any]) -> Handle:
        name = spec["name"]
        adopted = False
        with _docker_errors():
            try:
                container = self._client.containers.create(**spec)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: the name exists: a retried start adopts it
                    raise
                container = self._client.containers.get(name)
                adopted = True
            if not adopted or _state_of(container.attrs) != ContainerState.RUNNING:  # a new one is "created"
                container.start()
        return Handle(id=str(container.id), name=name, adopted=adopted)

    def claim(self, name: str, new_name: str, cpu_shares: int) -> Handle:
        """A warm-pool container becomes a session's: renamed (every later call finds it by the session's name) and
        given the normal CPU weight (pool containers boot at a low one)."""
        with _docker_errors():
            container = self._client.containers.get(name)
            container.rename(new_name)
            container.update(cpu_shares=cpu_shares)
        return Handle(id=str(container.id), name=new_name)

    def image_of(self, name: str) -> tuple[str, dict[str, str]]:
        """(image ID, image labels) of what the container runs."""
        with _docker_errors():
            image_id = str(self._client.containers.get(name).attrs.get("Image", ""))
            labels = (self._client.images.get(image_id).labels or {}) if image_id else {}
        return image_id, {str(k): str(v) for k, v in labels.items()}

    def image_id(self, ref: str) -> str:
        """The ID (``sha256:...``) of the image a reference names."""
        with _docker_errors():
            return str(self._client.images.get(ref).id)

    def image_archive(self, ref: str, path: str, owner: str = "") -> Iterator[bytes]:
        """A folder of an image as a tar stream (from a container created, never started, and removed after).

        The container is labelled ``<prefix>.archive=<owner>`` (the folder being copied), so one left behind by a
        process killed mid-stream can be found (``archives``) and removed (``workers.labstatic.sweep_archives``)."""
        with _docker_errors():
            container = self._client.containers.create(
                ref, command=["true"], network_mode="none", labels={ARCHIVE_LABEL: owner}
            )
        try:
            with _docker_errors():
                stream, _ = container.get_archive(path)
                yield from stream
        finally:
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                container.remove(force=True)

    def archives(self) -> dict[str, str]:
        """Every ``image_archive`` container on this engine: name -> owner."""
        return {c.name: c.labels.get(ARCHIVE_LABEL, "") for c in self.list_labelled(ARCHIVE_LABEL)}

    def state(self, name: str) -> ContainerState:
        with _docker_errors():
            try:
                container = self._client.containers.get(name)
            except docker.errors.NotFound:
                return ContainerState.MISSING
        return _state_of(container.attrs)

    def stop(self, name: str, timeout: int = 10) -> None:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` s) and remove. With ``timeout`` 0 one call kills and
        removes (``docker rm -f``): no inspect, no separate stop."""
        with _docker_errors():
            try:
                if timeout <= 0:
                    self._client.api.remove_container(name, force=True)
                    return
                container = self._client.containers.get(name)
                if _state_of(container.attrs) == ContainerState.RUNNING:
                    container.stop(timeout=timeout)
                container.remove(force=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code in (404, 409):  # gone, or removal already in progress
                    return
                raise

    def wait(self, name: str, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the container to exit: its exit status, or None if it still runs."""
        with _docker_errors():
            container = self._client.containers.get(name)
            try:
                result = container.wait(timeout=timeout)
            except requests.exceptions.ConnectionError as exc:  # docker-py's read timeout arrives as this
                if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
                    return None
                raise
            except requests.exceptions.Timeout:
                return None
        return int(result.get("StatusCode", -1))

    def list_managed(self, instance: str) -> list[ManagedContainer]:
        return self.list_labelled(f"{LABEL_PREFIX}.instance={instance}")

    def list_labelled(self, label: str) -> list[ManagedContainer]:
        """Every container on this engine with this label (``key=value``)."""
        with _docker_errors():  # one removed between the engine's list and its inspect is left out, not an error
            containers = self._client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
        return [
            ManagedContainer(id=str(c.id), name=str(c.name), state=_state_of(c.attrs), labels=dict(c.labels))
            for c in containers
        ]

    def logs(self, name: str, tail: int = 40) -> str:
        """The last ``tail`` lines (at most ``LOG_MAX_BYTES``) of a container's output; "" when it is gone."""
        with _docker_errors():
            try:
                raw = self._client.containers.get(name).logs(stdout=True, stderr=True, tail=max(1, tail))
            except docker.errors.NotFound:
                return ""
        return bytes(raw)[-LOG_MAX_BYTES:].decode("utf-8", errors="replace")

    def stats_memory(self, name: str) -> int | None:
        """Current memory usage in bytes as the cgroup reports it (for benchmarks)."""
        with _docker_errors():
            try:
                stats: Any = self._client.containers.get(name).stats(stream=False)
            except docker.errors.NotFound:
                return None
        usage = dict(stats).get("memory_stats", {})
        return int(usage.get("usage", 0)) - int(usage.get("stats", {}).get("cache", 0))


