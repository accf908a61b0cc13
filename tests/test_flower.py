"""Flower runs beside the workers, behind basic auth from settings."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from launcher.settings import REPO_ROOT
from tests.helpers import free_port, spawn, wait_for
from workers.flower import flower_argv_env


def test_flower_requires_basic_auth_and_shows_the_queues(unit_settings, redis_url, tmp_path):
    """Without credentials Flower answers 401; with them it serves its dashboard and broker view."""
    port = free_port()
    settings = unit_settings.model_copy(
        update={
            "redis_url": redis_url,
            "flower_listen": f"127.0.0.1:{port}",
            "flower_password": SecretStr("s3cret-flower"),
        }
    )
    argv, env = flower_argv_env(settings)
    assert "s3cret-flower" not in " ".join(argv)
    env.update(settings.to_env())
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = spawn("flower", argv, tmp_path / "flower.log", env=env, cwd=REPO_ROOT)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(url, timeout=1).status_code == 401
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "flower")
        assert httpx.get(url, auth=("operator", "wrong")).status_code == 401
        ok = httpx.get(url, auth=("operator", "s3cret-flower"), timeout=10)
        assert ok.status_code == 200 and "Flower" in ok.text
        broker = httpx.get(f"{url}/broker", auth=("operator", "s3cret-flower"), timeout=10)
        assert broker.status_code == 200
    finally:
        proc.stop()
    assert "s3cret-flower" not in proc.log.read_text()
