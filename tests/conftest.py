"""Fixtures: a private real Redis, and for Docker tests the whole per-host stack.

The stack is real: nginx as the entry point, a Celery worker subprocess, the notebook image on the
local Docker engine, sample data generated inside that image. Everything runs on loopback and is
stopped by the PID we started. Without a Docker engine or the image, Docker tests skip, unless
``LAUNCHER_REQUIRE_DOCKER=1`` (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
import redis

from launcher.dispatch import CeleryDispatcher
from launcher.entrypoint import write_config
from launcher.models import Actor, Role
from launcher.service import LauncherService
from launcher.settings import REPO_ROOT, Settings
from launcher.spec import LABEL_PREFIX
from launcher.store import SessionStore
from tests.helpers import Proc, free_port, spawn, wait_for
from workers.runtime import DockerRuntime

IMAGE = os.environ.get("LAUNCHER_NOTEBOOK_IMAGE", "launcher-notebook:latest")
REQUIRE_DOCKER = os.environ.get("LAUNCHER_REQUIRE_DOCKER") == "1"


def _tmpdir(prefix: str) -> Path:
    # Under /tmp, mode 0755: the entry point's workers (not root) must traverse to the sockets.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = _tmpdir("nbl-test-")
    yield path
    if os.environ.get("LAUNCHER_TEST_KEEP") == "1":
        print(f"\ntest folders and logs kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    """A real redis-server of our own on a free loopback port."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(workdir)], workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    wait_for(lambda: _pings(client), 10, "redis-server")
    yield url
    proc.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def random_instance() -> str:
    return "t" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(7))


@pytest.fixture
def unit_settings(tmp_path: Path) -> Settings:
    """Settings for tests that need no Docker: templates from the repo, folders in tmp."""
    return Settings(
        instance=random_instance(),
        workspaces_dir=tmp_path / "workspaces",
        sessions_dir=tmp_path / "sessions",
        data_dir=tmp_path / "data",
    )


class RecordingDispatcher:
    """A real dispatcher object that records what would be enqueued (for service-only tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def start(self, session):
        self.sent.append(("start", session.id, session.host))

    def stop(self, session, actor, reason):
        self.sent.append(("stop", session.id, actor, reason))

    def stop_all(self, actor):
        self.sent.append(("stop_all", actor))
        return "task-id"


# -- the Docker stack -----------------------------------------------------------------------------

def docker_or_skip() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.images.get(IMAGE)
        return client
    except Exception as exc:
        reason = f"needs the Docker engine and image {IMAGE} (scripts/build-images.sh): {exc}"
        if REQUIRE_DOCKER:
            pytest.fail(reason)
        pytest.skip(reason)


def make_sample_data(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    os.chown(dest, 1000, 1000)
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-u", "1000:1000",
         "-v", f"{REPO_ROOT / 'notebooks' / 'lib'}:/opt/research:ro", "-e", "PYTHONPATH=/opt/research",
         "-v", f"{dest}:/out", IMAGE, "python3", "-m", "research.sampledata", "--preset", "ci", "--out", "/out"],
        check=True, capture_output=True,
    )


def start_worker(settings: Settings, log: Path, name: str) -> Proc:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", f"{settings.host_queue},launcher",
            "-P", "threads", "-c", str(settings.worker_concurrency), "-n", f"{name}@%h", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle"]
    proc = spawn(name, argv, log, env=env, cwd=REPO_ROOT)
    wait_for(lambda: "ready." in proc.tail(200) or not proc.alive(), 60, f"worker {name}")
    assert proc.alive(), proc.tail()
    return proc


@dataclass
class Stack:
    settings: Settings
    store: SessionStore
    service: LauncherService
    runtime: DockerRuntime
    docker: docker.DockerClient
    base_url: str
    worker: Proc
    nginx: Proc
    workdir: Path
    redis_url: str

    def actor(self, name: str, role: Role = Role.RESEARCHER) -> Actor:
        return Actor(name=name, role=role)

    def containers(self, **labels: str) -> list:
        filters = [f"{LABEL_PREFIX}.instance={self.settings.instance}"]
        filters += [f"{LABEL_PREFIX}.{k}={v}" for k, v in labels.items()]
        return self.docker.containers.list(all=True, filters={"label": filters})

    def stop_everything(self) -> None:
        admin = Actor.operator("test-cleanup")
        for session in self.store.list_live():
            try:
                self.service.stop(admin, session.user)
            except Exception:  # noqa: BLE001 - best effort between tests
                pass
        wait_for(lambda: self.store.count_live() == 0, 60, "all sessions to stop")


@pytest.fixture(scope="session")
def stack(workdir: Path, redis_url: str) -> Iterator[Stack]:
    client = docker_or_skip()
    base = workdir / "stack"
    base.mkdir()
    base.chmod(0o755)
    port = free_port()
    settings = Settings(
        instance=random_instance(),
        redis_url=redis_url,
        data_dir=base / "data",
        workspaces_dir=base / "workspaces",
        sessions_dir=base / "sessions",
        notebook_image=IMAGE,
        public_url=f"http://127.0.0.1:{port}",
        entrypoint_listen=f"127.0.0.1:{port}",
        cpus=1.0,
        mem_limit="1g",
        pids_limit=256,
        tmp_size="256m",
        start_timeout_s=90,
        stop_timeout_s=2,
        broker_visibility_timeout_s=30,
    )
    make_sample_data(settings.data_dir)
    settings.sessions_dir.mkdir(mode=0o711)
    conf = write_config(settings, base / "nginx")
    nginx = spawn("nginx", ["nginx", "-c", str(conf), "-p", str(base / "nginx")], base / "nginx.out")
    wait_for(lambda: _http_ok(f"{settings.public_url}/healthz"), 15, "nginx entry point")
    worker = start_worker(settings, base / "worker.log", f"w-{settings.instance}")
    store = SessionStore.from_settings(settings)
    service = LauncherService(settings, store, CeleryDispatcher.from_settings(settings))
    stack = Stack(settings, store, service, DockerRuntime(client), client, settings.public_url,
                  worker, nginx, base, redis_url)
    try:
        yield stack
    finally:
        for container in stack.containers():
            container.remove(force=True)
        worker.stop()
        nginx.stop()


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def clean_stack(stack: Stack) -> Iterator[Stack]:
    """The stack with no live session before and after the test."""
    stack.stop_everything()
    assert stack.worker.alive(), stack.worker.tail()
    yield stack
    stack.stop_everything()
