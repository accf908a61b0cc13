"""Compose: safe by default (loopback ports, internal Redis with a password, secrets required, a non-root console
with little mounted, read-only Flower) and complete (users, templates, launches from the CLI and the console)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from launcher.settings import REPO_ROOT
from launcher.spec import LABEL_PREFIX
from tests.helpers import free_port, wait_for
from tests.stack import random_instance

pytestmark = pytest.mark.docker

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SECRETS = {
    "LAUNCHER_REDIS_PASSWORD": "r-secret-1",
    "LAUNCHER_COOKIE_SECRET": "c-secret-2",
    "LAUNCHER_FLOWER_PASSWORD": "f-3",
}


def _need_compose() -> None:
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is not installed")


def _clean_env() -> dict[str, str]:
    """This process's environment without the settings of a product that may run here (the image name stays)."""
    keep = ("LAUNCHER_APP_IMAGE", "LAUNCHER_REQUIRE_DOCKER")
    return {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("LAUNCHER_", "COMPOSE_"))}


def _config(tmp_path, **env: str) -> subprocess.CompletedProcess:
    base = _clean_env()
    base.update(LAUNCHER_STATE=str(tmp_path), LAUNCHER_REPO=str(REPO_ROOT), **env)
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config"], env=base, capture_output=True, text=True, timeout=60
    )


def test_compose_file_refuses_to_start_without_secrets_and_is_safe_by_default(tmp_path):
    """Without the generated secrets docker-compose refuses; with them, every published port is on 127.0.0.1
    (unless LAUNCHER_BIND says otherwise), Redis is unpublished on an internal network with protected mode on,
    no secret is on a command line, and the console runs as a non-root user with only its folder and the
    templates (read-only) mounted."""
    _need_compose()
    for missing in SECRETS:
        refused = _config(tmp_path, **{k: v for k, v in SECRETS.items() if k != missing})
        assert refused.returncode != 0 and missing in refused.stderr and "scripts/compose.sh" in refused.stderr

    done = _config(tmp_path, **SECRETS)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert config["networks"]["backend"].get("internal") is True
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    assert published["redis"] == [] and list(services["redis"]["networks"]) == ["backend"]
    assert sorted(name for name, ports in published.items() if ports) == ["console", "entrypoint", "flower"]
    for ports in published.values():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), port
    assert "protected-mode no" not in COMPOSE_FILE.read_text()
    assert "protected-mode yes" in " ".join(services["redis"]["command"])
    for name, svc in services.items():
        command = " ".join(svc.get("command") or [])
        assert not any(value in command for value in SECRETS.values()), name
    console = services["console"]
    assert console["user"].split(":")[0] not in ("0", "root") and console["read_only"] is True
    assert console["cap_drop"] == ["ALL"]
    mounts = sorted(console["volumes"])
    assert mounts == sorted(
        [
            f"{tmp_path}/console:/var/lib/launcher-console:rw",
            f"{REPO_ROOT}/notebooks/templates:{REPO_ROOT}/notebooks/templates:ro",
        ]
    )
    assert console["environment"]["LAUNCHER_TEMPLATES_DIR"] == f"{REPO_ROOT}/notebooks/templates"
    # Extra privilege: only the worker (which holds the Docker socket anyway) may mount, for the warm pool's binds;
    # no service is privileged.
    added = {name: svc.get("cap_add", []) for name, svc in services.items() if svc.get("cap_add")}
    assert added == {"worker": ["SYS_ADMIN"]}, added
    assert not any(svc.get("privileged") for svc in services.values())
    assert "LAUNCHER_COOKIE_SECRET" not in services["worker"]["environment"]
    assert "LAUNCHER_FLOWER_PASSWORD" not in services["console"]["environment"]

    wide = yaml.safe_load(_config(tmp_path, LAUNCHER_BIND="0.0.0.0", **SECRETS).stdout)
    assert wide["services"]["console"]["ports"][0].startswith("0.0.0.0:")


# What the console does on Launch, run with the console container's Python, user, environment and mounts.
CONSOLE_LAUNCH = textwrap.dedent(
    """
    import json, logging, sys
    logging.disable(logging.WARNING)
    from launcher.models import Actor, Role, SessionStatus
    from ui.context import get_service

    service = get_service()
    actor = Actor(name=sys.argv[1], role=Role.RESEARCHER)
    templates = service.templates()
    cards = {name: len((service.settings.templates_dir / f"{name}.ipynb").read_bytes()) for name in templates}
    if sys.argv[2] == "launch":
        session = service.launch(actor, "factor_analysis")
        session = service.wait(actor, session.id, {SessionStatus.RUNNING}, timeout=180)
    else:
        session = service.stop(actor)
        session = service.wait(actor, session.id, {SessionStatus.STOPPED}, timeout=120)
    print(json.dumps({"templates": templates, "cards": cards, "status": session.status.value, "url": session.url}))
    """
)


POOL_IDLE = (
    "import logging; logging.disable(logging.WARNING)\n"
    "from launcher.bootstrap import build_service\n"
    "from launcher.settings import Settings\n"
    "s = Settings()\n"
    "print(sum(r.get('state') == 'idle' for r in build_service(s).store.pool_slots(s.host_name).values()))"
)


def _flower_workers(port: int, auth: tuple[str, str]) -> dict | None:
    """Flower's list of workers, or None while it has none (or is not answering yet)."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", auth=auth, timeout=20)
    except httpx.HTTPError:
        return None
    return response.json() or None if response.status_code == 200 else None


def _entry_point_answers(url: str, port: int) -> int:
    """The entry point's answer for a session URL, sent to 127.0.0.1 with the URL's Host (no DNS needed)."""
    parts = urlsplit(url)
    target = f"http://127.0.0.1:{port}{parts.path or '/'}"
    return httpx.get(target, headers={"Host": parts.netloc}, timeout=30).status_code


def test_compose_up_launch_from_cli_and_console_stop_down(workdir):
    """`scripts/compose.sh up` on ports, project and folder of its own generates private secrets and console users;
    Redis refuses a client without the password; a CLI launch and a console-service launch run and stop; Flower
    is read-only; no secret is on a host command line; down cleans up."""
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    _need_compose()
    instance = random_instance()
    project = f"nbl{instance}"
    port, flower, console = free_port(), free_port(), free_port()
    state = workdir / f"compose-{instance}"
    env = _clean_env()
    env.update(
        LAUNCHER_STATE=str(state),
        LAUNCHER_PORT=str(port),
        LAUNCHER_FLOWER_PORT=str(flower),
        LAUNCHER_CONSOLE_PORT=str(console),
        LAUNCHER_INSTANCE=instance,
        COMPOSE_PROJECT_NAME=project,
    )

    def compose(*args: str, timeout: float = 600, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(REPO_ROOT / "scripts" / "compose.sh"), *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )

    def cli(*args: str) -> subprocess.CompletedProcess:
        return compose("exec", "-T", "worker", "python3", "-m", "launcher.cli", *args, timeout=300)

    up = compose("up")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        secrets_file, passwords = state / "secrets.env", state / "initial-passwords"
        secrets = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines())
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600 and stat.S_IMODE(passwords.stat().st_mode) == 0o600
        assert not any(value in up.stdout + up.stderr for value in secrets.values())
        assert str(passwords) in up.stderr
        seeded = {line.split()[0]: line.split()[2] for line in passwords.read_text().splitlines()}
        assert sorted(seeded) == ["admin", "alice"]
        assert not any(value in up.stdout + up.stderr for value in seeded.values())
        host_commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert not any(value in host_commands for value in secrets.values())

        # Redis: not published, and nothing gets in without the password.
        redis_ctr = client.containers.get(compose("ps", "-q", "redis").stdout.strip())
        assert not any(redis_ctr.attrs["NetworkSettings"]["Ports"].values() or [])
        noauth = compose("exec", "-T", "redis", "redis-cli", "ping")
        assert "NOAUTH" in noauth.stdout + noauth.stderr

        # Console users: created on first up; adding one works without a TTY, as documented.
        assert compose("exec", "-T", "console", "id", "-u").stdout.strip() == "59100"
        added = compose(
            "exec", "-T", "console", "python3", "-m", "ui.users", "add", "--user", "bob", "--role", "researcher",
            "--password-stdin", stdin="bob-password-123\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        listed = compose("exec", "-T", "console", "python3", "-m", "ui.users", "list").stdout.split()
        assert {"alice", "admin", "bob"} <= set(listed)

        # Flower: basic auth, the worker and its queues shown, control refused.
        auth = ("operator", secrets["LAUNCHER_FLOWER_PASSWORD"])
        assert httpx.get(f"http://127.0.0.1:{flower}/", timeout=10).status_code == 401
        workers = wait_for(lambda: _flower_workers(flower, auth), 90, "flower to see the worker")
        queues = {q["name"] for w in workers.values() for q in w.get("active_queues", [])}
        assert f"{instance}.host.local" in queues and f"{instance}.control" in queues
        name = next(iter(workers))
        control = httpx.post(f"http://127.0.0.1:{flower}/api/worker/shutdown/{name}", auth=auth, timeout=20)
        assert control.status_code == 403 and "Read only" in control.text

        # A launch from the operator CLI and one through the console's own service path. The worker keeps a warm
        # pool here too: the CLI's launch claims a pool notebook, whose workspace the worker bound from its container.
        wait_for(lambda: "ready." in compose("logs", "worker").stdout, 60, "the compose worker")
        wait_for(lambda: int(compose("exec", "-T", "worker", "python3", "-c", POOL_IDLE).stdout or 0) >= 1, 180,
                 "an idle pool notebook")  # fmt: skip
        start = cli("start", "--user", "compose-cat", "--service-account", "--template", "alpha_research", "--wait", "--json")
        assert start.returncode == 0, start.stderr + start.stdout
        record = json.loads(start.stdout)
        assert record["status"] == "running"
        assert record["pool_slot"], record  # warm: a claim, not a cold start
        work = client.containers.get(record["container_id"]).exec_run(["ls", "/home/jovyan/work"])
        assert work.exit_code == 0 and "alpha_research.ipynb" in work.output.decode(), work.output
        launched = compose("exec", "-T", "console", "python3", "-c", CONSOLE_LAUNCH, "compose-dog", "launch")
        assert launched.returncode == 0, launched.stderr[-3000:]
        shown = json.loads(launched.stdout.strip().splitlines()[-1])
        assert shown["status"] == "running", shown
        assert sorted(shown["templates"]) == ["alpha_research", "backtest_review", "factor_analysis"]
        assert all(size > 0 for size in shown["cards"].values())  # the template cards can be drawn
        for url in (record["url"], shown["url"]):
            assert _entry_point_answers(url, port) < 500  # routed to a live session, not a 502

        stop = cli("stop", "--user", "compose-cat", "--wait", "--json")
        assert stop.returncode == 0 and json.loads(stop.stdout)["status"] == "stopped", stop.stderr
        stopped = compose("exec", "-T", "console", "python3", "-c", CONSOLE_LAUNCH, "compose-dog", "stop")
        assert stopped.returncode == 0 and json.loads(stopped.stdout.strip().splitlines()[-1])["status"] == "stopped"
    finally:
        down = compose("down", "-v", timeout=300)
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_PREFIX}.instance={instance}"}):
            c.remove(force=True)
    assert down.returncode == 0, down.stderr
    assert client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}) == []
    # down took the warm pool with it: no pool notebook left, no copy out of the image the worker left half done
    # (it copies in the background and was stopped), the slots folder released and empty.
    assert client.containers.list(all=True, filters={"name": f"{instance}-pool-"}) == []
    copies = client.containers.list(all=True, filters={"label": f"{LABEL_PREFIX}.archive"})
    assert not [c.name for c in copies if c.labels[f"{LABEL_PREFIX}.archive"].startswith(f"{state}/")]
    slots = str(state / "pool-slots")
    assert not any(line.split()[4].startswith(slots) for line in Path("/proc/self/mountinfo").read_text().splitlines())
    assert list((state / "pool-slots").iterdir()) == []
