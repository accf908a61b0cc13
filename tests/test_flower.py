"""Flower runs beside the workers: behind basic auth from settings, refusing to start without a password,
showing the real workers and queues, and read-only (its task and worker control API is off)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
from pydantic import SecretStr

from launcher.settings import REPO_ROOT
from tests.helpers import free_port, spawn, wait_for
from tests.stack import start_worker
from workers.flower import flower_argv_env


def test_flower_refuses_to_start_without_a_password(unit_settings):
    """`python -m workers.flower` with no LAUNCHER_FLOWER_PASSWORD exits at once, naming the variable."""
    env = {**os.environ, **unit_settings.to_env(), "PYTHONPATH": str(REPO_ROOT), "LAUNCHER_FLOWER_PASSWORD": ""}
    done = subprocess.run(
        [sys.executable, "-m", "workers.flower"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert done.returncode != 0
    assert "LAUNCHER_FLOWER_PASSWORD is not set" in done.stderr and "Traceback" not in done.stderr


def test_flower_requires_basic_auth_shows_the_workers_and_queues_and_is_read_only(unit_settings, redis_url, tmp_path):
    """Without credentials Flower answers 401; with them it lists the running worker with the queues it consumes
    and the broker's queues, and refuses every task or worker control call with 403 (read-only)."""
    port = free_port()
    settings = unit_settings.model_copy(
        update={
            "redis_url": redis_url,
            "flower_listen": f"127.0.0.1:{port}",
            "flower_password": SecretStr("s3cret-flower"),
            "worker_concurrency": 2,
        }
    )
    argv, env = flower_argv_env(settings)
    assert "s3cret-flower" not in " ".join(argv) and "--read_only=true" in argv
    env.update(settings.to_env())
    env["PYTHONPATH"] = str(REPO_ROOT)
    worker_name = f"w-{settings.instance}"
    worker = start_worker(settings, tmp_path / "worker.log", worker_name)
    proc = spawn("flower", argv, tmp_path / "flower.log", env=env, cwd=REPO_ROOT)
    url, auth = f"http://127.0.0.1:{port}", ("operator", "s3cret-flower")
    redis_password = redis_url.split("://:", 1)[1].split("@", 1)[0]
    seen: list[str] = []

    def get(path: str) -> httpx.Response:
        response = httpx.get(f"{url}{path}", auth=auth, timeout=20)
        seen.append(response.text)
        return response

    def workers() -> dict | None:
        try:
            response = get("/api/workers?refresh=1")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 and response.json() else None

    try:
        wait_for(lambda: proc.alive() is False or _answers(url), 60, "flower")
        assert proc.alive(), proc.tail()
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, auth=("operator", "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/workers", timeout=10).status_code == 401

        listed = wait_for(workers, 60, "flower to list the worker")
        name = next(n for n in listed if n.startswith(f"{worker_name}@"))
        queues = {q["name"] for q in listed[name]["active_queues"]}
        assert queues == {settings.host_queue, settings.control_queue}

        dashboard = get("/workers")
        assert dashboard.status_code == 200 and "Flower" in dashboard.text
        lengths = get("/api/queues/length")  # read from Redis, with the password
        assert lengths.status_code == 200
        assert {settings.host_queue, settings.control_queue} <= {q["name"] for q in lengths.json()["active_queues"]}
        broker = get("/broker")
        assert broker.status_code == 200 and settings.control_queue in broker.text

        for path in (
            "/api/task/async-apply/workers.tasks.stop_all",
            "/api/task/send-task/workers.tasks.reap",
            "/api/task/apply/workers.tasks.reap",
            f"/api/worker/shutdown/{name}",
            f"/api/worker/pool/restart/{name}",
            f"/api/worker/queue/cancel-consumer/{name}?queue={settings.control_queue}",
            "/api/task/revoke/0123",
        ):
            refused = httpx.post(f"{url}{path}", auth=auth, json={"args": ["flower"]}, timeout=20)
            assert refused.status_code == 403 and "Read only" in refused.text, (path, refused.text)
        assert worker.alive() and "Received task" not in worker.tail(200)
    finally:
        proc.stop()
        worker.stop()
    for text in [*seen, proc.log.read_text()]:
        assert "s3cret-flower" not in text and redis_password not in text


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 401
    except httpx.HTTPError:
        return False
