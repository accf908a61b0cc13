"""The real per-host stack for tests and benchmarks: Redis, nginx entry point, Celery worker.

Every process is ours, on loopback, stopped by its PID; containers are found by our instance label.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import redis

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.docker_runtime import DockerRuntime
from launcher.adapters.redis_store import SessionStore
from launcher.errors import LauncherError
from launcher.models import Actor, Role
from launcher.service import LauncherService
from launcher.settings import REPO_ROOT, Profile, Settings
from launcher.spec import LABEL_PREFIX
from tests.helpers import Proc, free_port, spawn, wait_for
from workers import labstatic

DEFAULT_IMAGE = "launcher-notebook:latest"


def random_instance() -> str:
    return "t" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(7))


def docker_client(image: str = DEFAULT_IMAGE) -> docker.DockerClient:
    client = docker.from_env(timeout=30)
    client.ping()
    client.images.get(image)
    return client


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def write_redis_conf(path: Path, lines: list[str]) -> Path:
    """A redis.conf readable only by us (it holds ``requirepass``: never on a command line that ``ps`` shows)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def start_redis(folder: Path, *, tls_dir: Path | None = None, appendonly: bool = False) -> tuple[Proc, str]:
    """A redis-server of our own on a free loopback port that requires a password (carried in the URL).

    With ``tls_dir`` (``ca.crt``, ``redis.crt``, ``redis.key`` from scripts/redis-tls.sh) it listens
    with TLS only (``rediss://``; plain port 0). With ``appendonly`` it keeps an append-only file
    (``appendonly-<port>`` in ``folder``, fsynced on every write), so a restart from the same
    ``redis-<port>.conf`` loses nothing."""
    port, password = free_port(), secrets.token_urlsafe(24)
    aof = ["appendonly yes", "appendfsync always", f"appenddirname appendonly-{port}"] if appendonly else ["appendonly no"]
    lines = ["bind 127.0.0.1", "protected-mode yes", f"requirepass {password}", 'save ""', *aof]
    lines += [f"dir {folder}", f"logfile {folder / f'redis-{port}.log'}"]
    ping_options: dict[str, Any] = {}
    if tls_dir is None:
        lines.append(f"port {port}")
        url = f"redis://:{password}@127.0.0.1:{port}/0"
    else:
        lines += ["port 0", f"tls-port {port}", "tls-auth-clients no"]
        lines += [f"tls-{kind}-file {tls_dir / name}" for kind, name in (("cert", "redis.crt"), ("key", "redis.key"))]
        lines.append(f"tls-ca-cert-file {tls_dir / 'ca.crt'}")
        url = f"rediss://:{password}@127.0.0.1:{port}/0"
        ping_options = {"ssl_ca_certs": str(tls_dir / "ca.crt"), "ssl_cert_reqs": "required"}
    conf = write_redis_conf(folder / f"redis-{port}.conf", lines)
    proc = spawn("redis", ["redis-server", str(conf)], folder / f"redis-{port}.out")
    wait_for(lambda: _pings(redis.Redis.from_url(url, **ping_options)) or not proc.alive(), 10, "redis-server")
    assert proc.alive(), (folder / f"redis-{port}.log").read_text(errors="replace")[-2000:]
    return proc, url


def run_in_notebook_image(
    command: list[str], mounts: dict[Path, str], image: str = DEFAULT_IMAGE, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command in the notebook image as a notebook runs: uid 1000, no network, read-only root,
    the research library on PYTHONPATH. ``mounts`` maps host paths to ``/target[:ro]``."""
    argv = [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "1000:1000",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-e",
        "HOME=/tmp",
        "-e",
        "PYTHONPATH=/opt/research",
        "-v",
        f"{REPO_ROOT / 'notebooks' / 'lib'}:/opt/research:ro",
    ]
    for host, target in mounts.items():
        argv += ["-v", f"{host}:{target}"]
    return subprocess.run([*argv, image, *command], capture_output=True, text=True, timeout=timeout)


TEMPLATES = ("alpha_research", "factor_analysis", "backtest_review")


def run_template(name: str, data: Path, out: Path, image: str = DEFAULT_IMAGE) -> subprocess.CompletedProcess:
    """Execute a template with papermill in the notebook image: data read-only, results in ``out/<name>``."""
    command = [
        "python3",
        "-m",
        "papermill",
        f"/templates/{name}.ipynb",
        f"/out/{name}.ipynb",
        "-p",
        "output_dir",
        f"/out/{name}",
    ]
    mounts = {data: "/data:ro", REPO_ROOT / "notebooks" / "templates": "/templates:ro", out: "/out"}
    return run_in_notebook_image(command, mounts, image)


def make_sample_data(dest: Path, image: str = DEFAULT_IMAGE, preset: str = "ci") -> None:
    dest.mkdir(parents=True, exist_ok=True)
    os.chown(dest, 1000, 1000)
    done = run_in_notebook_image(
        ["python3", "-m", "research.sampledata", "--preset", preset, "--out", "/out"], {dest: "/out"}, image
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _celery(settings: Settings, *args: str, extra_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO_ROOT), **(extra_env or {})}
    return [sys.executable, "-m", "celery", "-A", "workers.app", *args], env


def start_worker(settings: Settings, log: Path, name: str, env: dict[str, str] | None = None) -> Proc:
    """A Celery worker for ``settings``' host; ``env`` adds to its environment (e.g. ``DOCKER_HOST``)."""
    argv, full_env = _celery(
        settings,
        "worker",
        "-Q",
        settings.worker_queues,
        "-P",
        "threads",
        "-c",
        str(settings.worker_concurrency),
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        extra_env=env,
    )
    proc = spawn(name, argv, log, env=full_env, cwd=REPO_ROOT)
    wait_for(lambda: "ready." in proc.tail(200) or not proc.alive(), 60, f"worker {name}")
    assert proc.alive(), proc.tail()
    return proc


def start_beat(settings: Settings, folder: Path, name: str) -> Proc:
    argv, env = _celery(
        settings,
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(folder / f"{name}-schedule"),
        "--pidfile",
        str(folder / f"{name}.pid"),
    )
    proc = spawn(name, argv, folder / f"{name}.log", env=env, cwd=REPO_ROOT)
    wait_for(lambda: "beat: Starting" in proc.tail(100) or not proc.alive(), 30, f"beat {name}")
    assert proc.alive(), proc.tail()
    return proc


def start_console(settings: Settings, folder: Path, name: str = "console", **env_extra: str) -> tuple[Proc, str]:
    """The real console (``streamlit run ui/asgi.py``) on the port of ``settings.console_url`` (where
    the entry point sends browsers to be authorized), or a free one."""
    configured = settings.console_url.rsplit(":", 1)[-1].rstrip("/")
    port = int(configured) if configured.isdigit() and settings.console_url.startswith("http://127.0.0.1:") else free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO_ROOT), "LAUNCHER_CONSOLE_URL": url, **env_extra}
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO_ROOT / "ui" / "asgi.py"),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    proc = spawn(name, argv, folder / f"{name}.log", env=env, cwd=REPO_ROOT)
    wait_for(lambda: http_ok(f"{url}/_stcore/health") or not proc.alive(), 60, "the console")
    assert proc.alive(), proc.tail()
    return proc, url


def http_ok(url: str, verify: bool = True) -> bool:
    try:
        return httpx.get(url, timeout=1, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


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
        # a container removed between the list and its inspect is left out
        return self.docker.containers.list(all=True, filters={"label": filters}, ignore_removed=True)

    def stop_everything(self) -> None:
        admin = Actor.operator("test-cleanup")
        for session in self.store.list_live():
            with contextlib.suppress(LauncherError):  # best effort between tests
                self.service.stop(admin, session_id=session.id)
        wait_for(lambda: self.store.count_live() == 0, 60, "all sessions to stop")

    def shutdown(self) -> None:
        reports = self.docker.containers.list(
            all=True, filters={"label": f"{LABEL_PREFIX}.report.instance={self.settings.instance}"}
        )
        for container in [*self.containers(), *reports]:
            container.remove(force=True)
        self.worker.stop()
        labstatic.sweep_archives(self.runtime, [self.settings.lab_static_dir, self.settings.python_prefix_dir])
        self.nginx.stop()
        unmount_below(self.workdir)


def unmount_below(folder: Path) -> None:
    """Unmount every mount under ``folder`` (workspace images), so removing it deletes only our files."""
    prefix = str(folder.resolve()) + "/"
    targets = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        subprocess.run(["umount", target], capture_output=True, timeout=60)


def start_stack(
    base: Path, redis_url: str, client: docker.DockerClient, *, worker_env: dict[str, str] | None = None, **overrides: Any
) -> Stack:
    """Sample data, nginx and a worker for one host, with limits small enough for tests (``worker_env`` adds to
    the worker's environment)."""
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    port = free_port()
    values: dict[str, Any] = {
        "instance": random_instance(),
        "redis_url": redis_url,
        "data_dir": base / "data",
        "workspaces_dir": base / "workspaces",
        "sessions_dir": base / "sessions",
        "workspace_images_dir": base / "workspace-images",
        "public_url": f"http://nb.localhost:{port}",
        "entrypoint_listen": f"127.0.0.1:{port}",
        "console_url": f"http://127.0.0.1:{free_port()}",  # the port start_console uses
        "cookie_secret": secrets.token_urlsafe(32),
        "flower_password": secrets.token_urlsafe(16),
        "tmp_size": "256m",
        "host_cpu_overcommit": 16.0,  # tests run more 1-CPU sessions at once than this machine has cores
        "pool_sizes": {},  # no warm pool unless a test asks for one (tests/test_pool.py)
        "pool_slots_dir": base / "pool-slots",
        "template_store_dir": base / "template-store",
        "reports_dir": base / "reports",
        "lab_static_dir": base / "lab-static",
        "python_prefix_bind": False,  # a 1.1 GB copy per stack: only tests/test_python_prefix.py asks for it
        "python_prefix_dir": base / "python-prefix",
        "start_timeout_s": 90,
        "stop_timeout_s": 2,
        "broker_visibility_timeout_s": 30,
    }
    standard = {"cpus": 1.0, "mem_limit": "1g", "pids_limit": 256}  # the old single-profile overrides still work
    standard.update({k: overrides.pop(k) for k in ("cpus", "mem_limit", "pids_limit") if k in overrides})
    values["profiles"] = {
        "standard": Profile(**standard, description="tests"),  # type: ignore[arg-type]
        "large": Profile(cpus=2.0, mem_limit="2g", pids_limit=512, roles=["admin"]),
    }
    settings = Settings(**{**values, **overrides})
    make_sample_data(settings.data_dir, settings.notebook_image)
    settings.sessions_dir.mkdir(mode=0o711)
    nginx = start_entrypoint(settings, base / "nginx")
    worker = start_worker(settings, base / "worker.log", f"w-{settings.instance}", env=worker_env)
    store = SessionStore.from_settings(settings)
    wait_for(lambda: _registered(store, settings.host_name) or not worker.alive(), 60, "the worker's host to register")
    assert worker.alive(), worker.tail()
    service = LauncherService(settings, store, CeleryDispatcher.from_settings(settings))
    return Stack(
        settings, store, service, DockerRuntime(client), client, f"http://127.0.0.1:{port}", worker, nginx, base, redis_url
    )


def _registered(store: SessionStore, host: str) -> bool:
    return any(h.name == host and h.state.value == "up" for h in store.hosts())


def start_entrypoint(settings: Settings, prefix: Path, health_scheme: str = "http") -> Proc:
    """The real entry point (nginx and its authorizer: ``python -m launcher.entrypoint run``)."""
    prefix.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "launcher.entrypoint", "run", "--prefix", str(prefix)]
    proc = spawn("entrypoint", argv, prefix.parent / f"{prefix.name}.out", env=env, cwd=REPO_ROOT)
    port = settings.entrypoint_listen.rsplit(":", 1)[1]
    health = f"{health_scheme}://127.0.0.1:{port}/healthz"
    wait_for(lambda: http_ok(health, verify=False) or not proc.alive(), 15, "the entry point")
    wait_for(lambda: (prefix / "auth" / "authorizer.sock").exists() or not proc.alive(), 15, "the authorizer")
    assert proc.alive(), proc.tail()
    return proc
