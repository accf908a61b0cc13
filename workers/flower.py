"""Start Flower for operators, behind basic auth from settings: ``python -m workers.flower``.

The credentials go to Flower through its environment (FLOWER_BASIC_AUTH), never on a command line
where ``ps`` would show them.
"""

from __future__ import annotations

import os
import sys

from launcher.settings import Settings


def flower_argv_env(settings: Settings) -> tuple[list[str], dict[str, str]]:
    address, _, port = settings.flower_listen.rpartition(":")
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--address={address}", f"--port={port}"]
    env = {**os.environ, "FLOWER_BASIC_AUTH": f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"}
    return argv, env


def main() -> None:
    argv, env = flower_argv_env(Settings())
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
