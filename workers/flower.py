"""Start Flower for operators, behind basic auth from settings: ``python -m workers.flower``.

The credentials go to Flower through its environment (FLOWER_BASIC_AUTH), never on a command line
where ``ps`` would show them. Flower refuses to start without a password (``LAUNCHER_FLOWER_PASSWORD``),
and runs read-only: its task and worker control API (apply, send, revoke, shut down, pool and
consumer changes) answers 403, so Flower is for watching; starts and stops go through the launcher.
"""

from __future__ import annotations

import os
import sys

from launcher.settings import MissingSecret, Settings


def flower_argv_env(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of the Flower process; raises ``MissingSecret`` without a password."""
    settings.require_secrets("flower_password")
    address, _, port = settings.flower_listen.rpartition(":")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--address={address}",
        f"--port={port}",
        "--read_only=true",
    ]
    env = {**os.environ, "FLOWER_BASIC_AUTH": f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"}
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    return argv, env


def main() -> None:
    try:
        argv, env = flower_argv_env(Settings())
    except MissingSecret as exc:
        sys.exit(f"flower: {exc}")
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
