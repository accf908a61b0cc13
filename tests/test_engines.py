"""A second Docker engine on this machine (tests/engines.py): isolated from the machine's engine, runs the notebook
image locked down, bind-mounts host folders, and stops without leaving a process or a mount behind."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.engines import (
    REQUIRE_DOCKER,
    SecondEngine,
    SecondEngineError,
    machine_docker_or_skip,
    mounts_under,
    pids_mentioning,
    remove_tree,
)

pytestmark = pytest.mark.docker

IMAGE = os.environ.get("LAUNCHER_NOTEBOOK_IMAGE", "launcher-notebook:latest")
LOCKED_DOWN = {
    "network_mode": "none",
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}


@pytest.fixture(scope="module")
def machine() -> Iterator[docker.DockerClient]:
    machine_docker_or_skip()
    client = docker.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def notebook_engine(second_engine: SecondEngine, machine: docker.DockerClient) -> SecondEngine:
    """The second engine with the notebook image copied in (a no-op when its data root already has it)."""
    try:
        machine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        reason = f"needs the image {IMAGE} on the machine's engine (scripts/build-images.sh)"
        if REQUIRE_DOCKER:
            pytest.fail(reason)
        pytest.skip(reason)
    copied = second_engine.load_image(IMAGE)
    print(
        f"\nsecond engine: ready in {second_engine.ready_seconds:.2f} s; {IMAGE} "
        + (f"copied in {second_engine.last_load_seconds:.1f} s" if copied else "already there (same image ID)")
    )
    assert second_engine.load_image(IMAGE) is False  # the same image ID: nothing copied again
    assert second_engine.client().images.get(IMAGE).id == machine.images.get(IMAGE).id
    return second_engine


def run(client: docker.DockerClient, command: list[str], **options) -> tuple[int, str]:
    """Run a container to its end on ``client``; its exit status and output. The container is removed."""
    container = client.containers.run(IMAGE, command, detach=True, **options)
    try:
        status = container.wait(timeout=120)["StatusCode"]
        return status, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_the_notebook_image_runs_locked_down_in_the_second_engine(notebook_engine: SecondEngine) -> None:
    status, out = run(notebook_engine.client(), ["python", "-c", "print(1+1)"], **LOCKED_DOWN)
    assert (status, out.strip()) == (0, "2"), out


def test_each_engine_sees_only_its_own_containers(notebook_engine: SecondEngine, machine: docker.DockerClient) -> None:
    second = notebook_engine.client()
    label = {"nbl-test-engines": uuid.uuid4().hex}
    ours = second.containers.create(IMAGE, ["sleep", "60"], labels=label, **LOCKED_DOWN)
    theirs = machine.containers.create(IMAGE, ["true"], labels=label, **LOCKED_DOWN)  # never started
    try:
        ours.start()
        machine_ids = {c.id for c in machine.containers.list(all=True)}
        second_ids = {c.id for c in second.containers.list(all=True)}
        assert ours.id in second_ids and theirs.id in machine_ids
        assert ours.id not in machine_ids
        assert not machine_ids & second_ids
        with pytest.raises(docker.errors.NotFound):
            machine.containers.get(ours.id)
        with pytest.raises(docker.errors.NotFound):
            second.containers.get(theirs.id)
    finally:
        ours.remove(force=True)
        theirs.remove(force=True)


def test_a_host_folder_bind_mounted_in_the_second_engine_is_writable_as_uid_59000(
    notebook_engine: SecondEngine, tmp_path: Path
) -> None:
    """The launcher's worker bind-mounts session folders: a file written inside as uid 59000 shows on the host."""
    shared = tmp_path / "session"
    shared.mkdir()
    shared.chmod(0o777)
    script = "import os; open('/work/out.txt', 'w').write(str(os.getuid())); print(os.getuid())"
    status, out = run(
        notebook_engine.client(),
        ["python", "-c", script],
        user="59000:59000",
        volumes={str(shared): {"bind": "/work", "mode": "rw"}},
        **LOCKED_DOWN,
    )
    assert status == 0, out
    written = shared / "out.txt"
    assert written.read_text() == "59000"
    assert (written.stat().st_uid, written.stat().st_gid) == (59000, 59000)


def test_the_idle_second_engine_memory(notebook_engine: SecondEngine) -> None:
    """Measured, not asserted tightly: the RSS of our idle dockerd (and the containerd it manages)."""
    time.sleep(5)  # idle: no container, no API call
    memory = notebook_engine.memory()
    print(
        f"\nidle second engine: dockerd RSS {memory['dockerd_rss_kib'] / 1024:.1f} MiB, "
        f"containerd RSS {memory.get('containerd_rss_kib', 0) / 1024:.1f} MiB"
    )
    assert 0 < memory["dockerd_rss_kib"] < 512 * 1024


def _tiny_image(client: docker.DockerClient) -> str:
    """An image of three symlinks (bin, lib, lib64 into /usr): with the host's /usr bind-mounted read-only, it runs
    the host's own binaries, so a stop test needs no 30 s image copy."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("bin", "lib", "lib64", "sbin"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            tar.addfile(info)
        for name in ("usr", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
    client.api.import_image_from_data(buf.getvalue(), repository="nbl-tiny", tag="1")
    return "nbl-tiny:1"


def test_stop_leaves_no_process_and_no_mount_and_a_kept_data_root_is_reused() -> None:
    machine_docker_or_skip()
    folder = Path(tempfile.mkdtemp(prefix="nbl-e2-", dir="/tmp"))
    try:
        engine = SecondEngine(folder / "root", keep_data=True)
        with engine:
            client = engine.client()
            image = _tiny_image(client)
            image_id = client.images.get(image).id
            container = client.containers.run(
                image, ["/usr/bin/sleep", "300"], detach=True, volumes={"/usr": {"bind": "/usr", "mode": "ro"}},
                **LOCKED_DOWN,
            )  # fmt: skip
            assert container.reload() is None and container.status == "running"
            pid = engine.pid
            assert mounts_under(engine.root)  # its layers are mounted while it runs
            assert pids_mentioning(f"{engine.exec_root}/")  # its containerd and the container's shim
        # stopped: no dockerd, no containerd or shim, no fuse-overlayfs, nothing mounted, exec root gone, data kept
        assert not os.path.exists(f"/proc/{pid}")
        assert pids_mentioning(str(engine.root)) == [] and pids_mentioning(f"{engine.exec_root}/") == []
        assert mounts_under(folder) == []
        assert not engine.exec_root.exists() and not engine.socket.exists()
        assert (engine.root / "data").is_dir()

        again = SecondEngine(folder / "root", keep_data=True)
        with again:
            client = again.client()
            assert client.images.get(image).id == image_id  # the data root was reused
            assert client.containers.list(all=True) == []  # stop() removed the container
        assert mounts_under(folder) == []

        clean = SecondEngine(folder / "clean")  # keep_data=False: everything goes
        with clean:
            assert clean.client().ping()
        assert not clean.root.exists() and mounts_under(folder) == []
        assert not os.path.exists(f"/proc/{clean.pid}")
    finally:
        remove_tree(folder)  # refuses if anything is still mounted below it


def test_a_root_in_use_is_refused_and_a_failed_start_reports_the_log() -> None:
    machine_docker_or_skip()
    with SecondEngine(Path(tempfile.mkdtemp(prefix="nbl-e2-", dir="/tmp"))) as first:
        client = first.client()
        with pytest.raises(SecondEngineError, match="in use by dockerd"):
            SecondEngine(first.root).start()
        assert client.ping() and mounts_under(first.root)  # the refused start touched nothing of the running one
    broken = Path(tempfile.mkdtemp(prefix="nbl-e2-", dir="/tmp"))
    (broken / "docker.sock").mkdir()  # dockerd cannot listen there: it exits, and start() says why
    with pytest.raises(SecondEngineError, match="exited with status") as failure:
        SecondEngine(broken).start()
    assert "docker.sock" in str(failure.value).split("log", 1)[1]  # the log tail is in the message
    # the failed start cleaned up after itself: root held something before (docker.sock), so root itself stays
    assert list(broken.iterdir()) == []
    broken.rmdir()
