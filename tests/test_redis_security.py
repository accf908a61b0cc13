"""Redis requires its password everywhere, and between hosts it speaks TLS only (``rediss://``)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.redis_store import SessionStore
from launcher.models import Actor, Role, Session, SessionStatus, new_session_id, new_token
from launcher.service import LauncherService
from launcher.settings import REPO_ROOT, MissingSecret, Settings
from tests.helpers import free_port, spawn, wait_for
from tests.stack import random_instance, start_redis, start_worker

SCRIPTS = REPO_ROOT / "scripts"


def _without_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _ping(url: str, **options) -> bool:
    with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, **options) as client:
        return bool(client.ping())


def test_a_client_without_the_password_is_refused(redis_url):
    """The test Redis (like every Redis the product starts) answers NOAUTH without the password, WRONGPASS with
    a wrong one, and works with the right one."""
    bare = _without_password(redis_url)
    assert bare != redis_url
    port = int(bare.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # what any client sees first
        raw.sendall(b"PING\r\n")
        assert raw.recv(100).startswith(b"-NOAUTH Authentication required")
    with pytest.raises(redis.AuthenticationError):
        _ping(bare)
    with pytest.raises(redis.AuthenticationError, match="WRONGPASS|invalid username-password"):
        _ping(bare.replace("://", "://:not-the-password@"))
    assert _ping(redis_url)
    settings = Settings(redis_url=bare, redis_password=redis_url.split("://:", 1)[1].split("@", 1)[0])
    assert SessionStore.from_settings(settings).redis.ping()


def test_the_start_scripts_redis_is_private_and_requires_the_password(tmp_path):
    """scripts/redis-conf.sh writes a mode 0600 config holding the password (never on the command line); the
    server started as scripts/start.sh does (umask 077) writes its append-only file for the owner only."""
    password, port = uuid.uuid4().hex, free_port()
    conf, data = tmp_path / "redis" / "redis.conf", tmp_path / "redis"
    done = subprocess.run(
        [str(SCRIPTS / "redis-conf.sh"), str(conf), str(data), str(port)],
        env={**os.environ, "REDIS_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and stat.S_IMODE(data.stat().st_mode) == 0o700
    text = conf.read_text()
    assert f'requirepass "{password}"' in text and "protected-mode yes" in text and "bind 127.0.0.1\n" in text
    refused = subprocess.run(
        [str(SCRIPTS / "redis-conf.sh"), str(tmp_path / "x.conf"), str(data), str(port)],
        env={k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0 and "refusing" in refused.stderr

    old = os.umask(0o077)  # what scripts/start.sh does around `launch redis`
    try:
        proc = spawn("redis-conf", ["redis-server", str(conf)], tmp_path / "redis.out")
    finally:
        os.umask(old)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: proc.alive() is False or _pings_with(url, password), 10, "the scripted redis-server")
        assert proc.alive(), proc.tail()
        cmdline = Path(f"/proc/{proc.popen.pid}/cmdline").read_bytes().decode()
        assert password not in cmdline
        with pytest.raises(redis.AuthenticationError):
            _ping(url)
        with redis.Redis.from_url(url, password=password) as client:
            client.set("k", "v")
            client.bgrewriteaof()
            wait_for(lambda: any(data.rglob("*.aof")), 10, "the append-only file")
        written = [p for p in data.rglob("*") if p != conf]
        assert written, "redis wrote no data files"
        for path in written:
            try:
                mode = path.stat().st_mode
            except FileNotFoundError:  # a rewrite's temporary file, renamed meanwhile
                continue
            assert stat.S_IMODE(mode) & 0o077 == 0, f"{path} is readable by others"
    finally:
        proc.stop()


def _pings_with(url: str, password: str) -> bool:
    try:
        return _ping(url, password=password)
    except redis.ConnectionError:
        return False


def test_redis_clients_refuse_to_connect_without_a_password_where_it_matters():
    """In production, or for a Redis not on loopback, building the connection URL without a password fails
    with a message naming LAUNCHER_REDIS_PASSWORD; with one, the password and TLS options are in the URL."""
    with pytest.raises(MissingSecret, match="LAUNCHER_REDIS_PASSWORD is not set.*production"):
        Settings(mode="production").redis_dsn()
    with pytest.raises(MissingSecret, match="LAUNCHER_REDIS_PASSWORD is not set.*redis.example"):
        Settings(redis_url="rediss://redis.example:6380/0").redis_dsn()
    with pytest.raises(MissingSecret):
        CeleryDispatcher.from_settings(Settings(mode="production"))
    dsn = Settings(
        redis_url="rediss://redis.example:6380/0", redis_password="p@ss/word", redis_ca_file="/etc/ca.crt"
    ).redis_dsn()
    assert dsn == "rediss://:p%40ss%2Fword@redis.example:6380/0?ssl_cert_reqs=required&ssl_ca_certs=%2Fetc%2Fca.crt"
    assert Settings(redis_url="redis://:inurl@10.0.0.5:6379/1", redis_password="other").redis_dsn() == (
        "redis://:inurl@10.0.0.5:6379/1"
    )


@pytest.fixture
def tls_redis(tmp_path):
    """A TLS-only redis-server with a password, its certificate from scripts/redis-tls.sh."""
    tls = tmp_path / "tls"
    made = subprocess.run(
        [str(SCRIPTS / "redis-tls.sh"), str(tls), "redis.test"], capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((tls / "redis.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls / "ca.key").stat().st_mode) == 0o600
    proc, url = start_redis(tmp_path, tls_dir=tls)
    yield url, tls / "ca.crt"
    proc.stop()


@pytest.mark.docker
def test_a_second_host_works_over_tls_and_nothing_else_gets_in(tls_redis, tmp_path):
    """A worker process for "host2" reaches Redis over rediss:// with the CA and the password and stops a
    session the first host's store reserved; a plain-text client, one without the password and one that
    does not trust the CA are all refused."""
    from tests.conftest import docker_or_skip

    docker_or_skip()  # the worker's runtime talks to the local Docker engine
    url, ca = tls_redis
    password = url.split("://:", 1)[1].split("@", 1)[0]
    address = _without_password(url)
    port = int(address.rsplit(":", 1)[1].split("/")[0])

    with pytest.raises(redis.ConnectionError):  # plain text on the TLS port
        _ping(f"redis://:{password}@127.0.0.1:{port}/0")
    with pytest.raises(redis.AuthenticationError):
        _ping(address, ssl_ca_certs=str(ca))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        _ping(url)  # the system's CAs do not include ours

    host2 = Settings(
        instance=random_instance(),
        redis_url=address,
        redis_password=password,
        redis_ca_file=ca,
        host_name="host2",
        pool_sizes={},
        sessions_dir=tmp_path / "sessions",
        workspaces_dir=tmp_path / "workspaces",
        data_dir=tmp_path / "data",
        lab_static_dir=tmp_path / "lab-static",
        python_prefix_bind=False,  # no 1 GB copy for this test, and nothing in the checkout's var/
        python_prefix_dir=tmp_path / "python-prefix",
        worker_concurrency=2,
    )
    worker = start_worker(host2, tmp_path / "host2-worker.log", f"w-{host2.instance}")
    try:
        store = SessionStore.from_settings(host2)  # the first host's side: console / CLI
        # host2's worker registers its host over TLS, like every host
        wait_for(lambda: [h.name for h in store.hosts() if h.state.value == "up"] == ["host2"], 60, "host2 to register")
        service = LauncherService(host2, store, CeleryDispatcher.from_settings(host2))
        session = store.reserve(
            Session(id=new_session_id(), user="tls-user", template="alpha_research", token=new_token()), actor="tls"
        )
        assert session.host == "host2"
        service.stop(Actor(name="tls-admin", role=Role.ADMIN), "tls-user")
        wait_for(lambda: store.get(session.id).status == SessionStatus.STOPPED, 60, "host2 to stop the session")
        result = (
            CeleryDispatcher.from_settings(host2)
            .app.send_task("workers.tasks.reap", queue=host2.control_queue)
            .get(timeout=60)
        )  # and the result comes back through the TLS result backend
        assert result == []
        assert worker.alive(), worker.tail()
        probe = subprocess.run(  # a separate process built only from LAUNCHER_* variables, like host2's CLI
            [
                sys.executable,
                "-c",
                "from launcher.settings import Settings; from launcher.adapters.redis_store import SessionStore;"
                f"print(SessionStore.from_settings(Settings()).get({session.id!r}).status.value)",
            ],
            env={**os.environ, **host2.to_env(), "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )
        assert probe.returncode == 0 and probe.stdout.strip() == "stopped", probe.stderr
    finally:
        worker.stop()
    assert password not in worker.log.read_text()
