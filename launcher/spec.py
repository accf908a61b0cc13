"""The notebook container, described as plain data: a pure function of (session, settings).

``build_container_spec`` returns the keyword arguments for docker-py's ``containers.create``;
it does no I/O and is unit-tested against a literal dict (tests/test_spec.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.models import Session
from launcher.settings import Settings

LABEL_PREFIX = "io.nblauncher"
JUPYTER_SOCKET = "/run/nb/jupyter.sock"
WORKSPACE_MOUNT = "/home/jovyan/work"
LIBRARY_MOUNT = "/opt/research"


def container_name(settings: Settings, session_id: str) -> str:
    """Derived from the session id, so a retried start finds the container it already made."""
    return f"{settings.instance}-nb-{session_id}"


def labels_for(settings: Settings, session: Session) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}.instance": settings.instance,
        f"{LABEL_PREFIX}.session": session.id,
        f"{LABEL_PREFIX}.user": session.user,
        f"{LABEL_PREFIX}.template": session.template,
        f"{LABEL_PREFIX}.host": session.host or settings.host_name,
        f"{LABEL_PREFIX}.created": session.created_at.isoformat(),
    }


def base_path(session_id: str) -> str:
    return f"/user/{session_id}/"


def jupyter_command(session: Session) -> list[str]:
    return [
        "python3",
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ServerApp.sock={JUPYTER_SOCKET}",
        "--ServerApp.sock_mode=0660",
        f"--ServerApp.base_url={base_path(session.id)}",
        f"--ServerApp.root_dir={WORKSPACE_MOUNT}",
        # Reached only through the entry point; the token still guards every request.
        "--ServerApp.allow_remote_access=True",
        "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=",
        "--ServerApp.shutdown_no_activity_timeout=0",
    ]


def build_container_spec(session: Session, settings: Settings, *, workspace: Path, rundir: Path) -> dict[str, Any]:
    """Keyword arguments for ``docker.containers.create`` for this session's notebook."""
    mem = settings.mem_limit
    return {
        "image": settings.notebook_image,
        "name": container_name(settings, session.id),
        "command": jupyter_command(session),
        "labels": labels_for(settings, session),
        "user": f"{settings.notebook_uid}:{settings.notebook_gid}",
        "working_dir": WORKSPACE_MOUNT,
        "hostname": f"nb-{session.id}",
        "environment": {
            "JUPYTER_TOKEN": session.token.get_secret_value(),
            "PYTHONPATH": LIBRARY_MOUNT,
            "DATA_PATH": "/data",
            "USER_ID": session.user,
            "HOME": "/home/jovyan",
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        },
        "volumes": {
            str(settings.data_dir.resolve()): {"bind": "/data", "mode": "ro"},
            str(settings.templates_dir.resolve()): {"bind": "/templates", "mode": "ro"},
            str(settings.library_dir.resolve()): {"bind": LIBRARY_MOUNT, "mode": "ro"},
            str(workspace): {"bind": WORKSPACE_MOUNT, "mode": "rw"},
            str(rundir): {"bind": "/run/nb", "mode": "rw"},
        },
        "tmpfs": {
            "/tmp": f"rw,nosuid,nodev,size={settings.tmp_size},mode=1777",
            "/home/jovyan": (
                f"rw,nosuid,nodev,size={settings.tmp_size},"
                f"uid={settings.notebook_uid},gid={settings.notebook_gid},mode=0700"
            ),
        },
        "read_only": True,
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "nano_cpus": int(settings.cpus * 1_000_000_000),
        "mem_limit": mem,
        "memswap_limit": mem,  # no swap beyond the memory limit
        "pids_limit": settings.pids_limit,
        "init": False,  # tini is the image's entrypoint
        "restart_policy": {"Name": "no"},
        "stop_signal": "SIGTERM",
    }
