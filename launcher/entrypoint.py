"""Render and run the per-host entry point (nginx) from settings.

python -m launcher.entrypoint render --prefix DIR     write DIR/nginx.conf
python -m launcher.entrypoint run --prefix DIR        render, then exec nginx in the foreground
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from launcher.settings import REPO_ROOT, Settings

TEMPLATE = REPO_ROOT / "docker" / "nginx" / "entrypoint.conf.template"


def render(settings: Settings, prefix: Path, *, run_as_root: bool | None = None) -> str:
    """The nginx configuration text for this host (pure but for reading the template)."""
    if run_as_root is None:
        run_as_root = os.geteuid() == 0
    # As root, nginx's workers drop to a user of the group that owns each session's socket.
    user_directive = f"user nobody {_group_name(settings.proxy_gid)};" if run_as_root else ""
    text = TEMPLATE.read_text()
    for name, value in {
        "USER_DIRECTIVE": user_directive,
        "PREFIX": str(prefix),
        "LISTEN": settings.entrypoint_listen,
        "SESSIONS_DIR": str(settings.sessions_dir.resolve()),
    }.items():
        text = text.replace("{{" + name + "}}", value)
    return text


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        raise SystemExit(f"no group with gid {gid} on this host: set LAUNCHER_PROXY_GID") from None


def write_config(settings: Settings, prefix: Path) -> Path:
    prefix = prefix.resolve()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(settings, prefix))
    return conf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="launcher-entrypoint", description=__doc__)
    parser.add_argument("action", choices=["render", "run"])
    parser.add_argument("--prefix", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings()
    conf = write_config(settings, args.prefix)
    if args.action == "render":
        print(conf)
        return
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    os.execv(nginx, [nginx, "-c", str(conf), "-p", str(args.prefix.resolve())])


if __name__ == "__main__":
    main()
