"""Compose smoke test: the whole product up with docker-compose, a launch through the CLI inside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import pytest

from launcher.settings import REPO_ROOT
from launcher.spec import LABEL_PREFIX
from tests.helpers import free_port, wait_for
from tests.stack import random_instance

pytestmark = pytest.mark.docker


def test_compose_up_launch_stop_down(workdir):
    """`scripts/compose.sh up` brings the stack up; a CLI launch inside it runs, is reachable, stops; down cleans up."""
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is not installed")
    instance = random_instance()
    port, flower = free_port(), free_port()
    state = workdir / "compose"
    env = {
        **os.environ,
        "LAUNCHER_STATE": str(state),
        "LAUNCHER_PORT": str(port),
        "LAUNCHER_FLOWER_PORT": str(flower),
        "LAUNCHER_INSTANCE": instance,
        "COMPOSE_PROJECT_NAME": f"nbl{instance}",
    }

    def compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(REPO_ROOT / "scripts" / "compose.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )

    up = compose("up")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        wait_for(lambda: "ready." in compose("logs", "worker").stdout, 60, "the compose worker")
        start = compose(
            "exec",
            "-T",
            "worker",
            "python3",
            "-m",
            "launcher.cli",
            "start",
            "--user",
            "compose-cat",
            "--template",
            "alpha_research",
            "--wait",
            "--json",
        )
        assert start.returncode == 0, start.stderr + start.stdout
        record = json.loads(start.stdout)
        assert record["status"] == "running"
        assert httpx.get(record["open_url"], timeout=30).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{flower}", timeout=10).status_code == 401
        stop = compose(
            "exec", "-T", "worker", "python3", "-m", "launcher.cli", "stop", "--user", "compose-cat", "--wait", "--json"
        )
        assert stop.returncode == 0 and json.loads(stop.stdout)["status"] == "stopped", stop.stderr
    finally:
        down = compose("down", "-v", timeout=300)
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_PREFIX}.instance={instance}"}):
            c.remove(force=True)
    assert down.returncode == 0, down.stderr
    assert client.containers.list(all=True, filters={"label": f"com.docker.compose.project=nbl{instance}"}) == []
