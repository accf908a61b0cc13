"""The notebook container, described as plain data: a pure function of (session, settings).

``build_container_spec`` returns the keyword arguments for docker-py's ``containers.create``;
it does no I/O and is unit-tested against a literal dict (tests/test_spec.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.models import Session
from launcher.reports import ReportRun
from launcher.settings import Settings

LABEL_PREFIX = "io.nblauncher"
ARCHIVE_LABEL = f"{LABEL_PREFIX}.archive"  # a created, never started container an image folder is read from
SOCKET_DIR = "/run/nb"  # the session's sock/ folder: writable by the notebook only until Jupyter answers
JUPYTER_SOCKET = f"{SOCKET_DIR}/jupyter.sock"
IMAGE_PACKAGES = "/usr/local/lib/python3.11/dist-packages"  # the image's Python packages (workers/pyprefix.py)
SECRET_DIR = "/run/nbl"  # noqa: S105 - a path. The session's secret/ folder, read-only: the secret the entry point adds
AUTH_FILE = f"{SECRET_DIR}/auth"
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
        f"{LABEL_PREFIX}.name": session.label,
        f"{LABEL_PREFIX}.profile": session.profile,
        f"{LABEL_PREFIX}.cpus": f"{session.cpus:g}",
        f"{LABEL_PREFIX}.mem_bytes": str(session.mem_bytes),
        f"{LABEL_PREFIX}.pids_limit": str(session.pids_limit),
    }


def jupyter_command(static_url: str = "") -> list[str]:
    """The same for every session: no session id, user or secret on a command line ``ps`` shows. ``static_url``:
    where JupyterLab's assets are served for every session of this image (``workers.labstatic``), if anywhere."""
    shared = [f"--LabApp.static_url_prefix={static_url}"] if static_url else []
    return [
        "python3",
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ServerApp.sock={JUPYTER_SOCKET}",
        "--ServerApp.sock_mode=0660",
        f"--ServerApp.root_dir={WORKSPACE_MOUNT}",
        # Trusts only the secret the entry point adds, keeps Jupyter's Origin and XSRF checks, and
        # puts no token in JupyterLab's page (docker/notebook/nbl_identity.py).
        "--ServerApp.identity_provider_class=nbl_identity.EntryPointIdentityProvider",
        # Reached only through the entry point, which routes only its own session hosts.
        "--ServerApp.allow_remote_access=True",
        "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=",
        "--ServerApp.shutdown_no_activity_timeout=0",
        *shared,
    ]


def build_container_spec(
    session: Session,
    settings: Settings,
    *,
    workspace: Path,
    rundir: Path,
    data: Path | None = None,
    static_url: str = "",
    python_prefix: Path | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``docker.containers.create`` for this session's notebook.

    ``rundir`` is the session's host folder (``workers.hostfs.prepare_rundir``): its ``sock/``
    holds Jupyter's socket, its ``secret/`` the secret the entry point adds to every request.
    ``data`` is the host folder of the session's data snapshot (``launcher.snapshots.resolve``), mounted
    read-only at /data; without it the data root itself (the layout from before snapshots).
    ``python_prefix``: the host copy of this image's Python packages (``workers.pyprefix``), bound read-only
    over the image's own; without it the image's.
    """
    mem = session.mem_bytes
    spec = {
        "image": session.image or settings.notebook_image,
        "name": container_name(settings, session.id),
        "command": jupyter_command(static_url),
        "labels": labels_for(settings, session),
        "user": f"{settings.notebook_uid}:{settings.notebook_gid}",
        "working_dir": WORKSPACE_MOUNT,
        "hostname": f"nb-{session.id}",
        "environment": {
            "NBL_AUTH_FILE": AUTH_FILE,
            "PYTHONPATH": LIBRARY_MOUNT,
            "DATA_PATH": "/data",
            "USER_ID": session.user,
            "HOME": "/home/jovyan",
            "USER": "jovyan",  # the uid has no passwd entry in the image: getpass reads these
            "LOGNAME": "jovyan",
            "SHELL": "/bin/bash",  # JupyterLab's terminals (a login shell: /etc/profile.d/nbl_identity.sh)
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        },
        "volumes": {
            str(data if data is not None else settings.data_dir.resolve()): {"bind": "/data", "mode": "ro"},
            str(settings.templates_dir.resolve()): {"bind": "/templates", "mode": "ro"},
            str(settings.library_dir.resolve()): {"bind": LIBRARY_MOUNT, "mode": "ro"},
            str(workspace): {"bind": WORKSPACE_MOUNT, "mode": "rw"},
            str(rundir / "sock"): {"bind": SOCKET_DIR, "mode": "rw"},
            str(rundir / "secret"): {"bind": SECRET_DIR, "mode": "ro"},
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
        "nano_cpus": int(session.cpus * 1_000_000_000),
        "mem_limit": mem,
        "memswap_limit": mem,  # no swap beyond the memory limit
        "pids_limit": session.pids_limit,
        "init": False,  # tini is the image's entrypoint
        "restart_policy": {"Name": "no"},
        "stop_signal": "SIGTERM",
    }
    return _with_prefix(spec, python_prefix)


def _with_prefix(spec: dict[str, Any], python_prefix: Path | None) -> dict[str, Any]:
    if python_prefix is not None:
        spec["volumes"][str(python_prefix)] = {"bind": IMAGE_PACKAGES, "mode": "ro"}
    return spec


# -- report runs (workers/reports.py) ---------------------------------------------------------------------
REPORT_LABEL = f"{LABEL_PREFIX}.report"  # report containers carry no ``.instance`` label: reconcile skips them
REPORT_INPUT = "/run/report"  # read-only: template.ipynb and params.json
REPORT_OUTPUT = WORKSPACE_MOUNT  # the run's own folder, read-write; the rest of the workspace is not there
REPORT_CPU_SHARES = 512  # half the weight of a session: an unattended run yields to people at a notebook


def report_container_name(settings: Settings, run_id: str) -> str:
    return f"{settings.instance}-report-{run_id}"


def build_report_spec(
    run: ReportRun,
    settings: Settings,
    *,
    output: Path,
    inputs: Path,
    data: Path | None = None,
    python_prefix: Path | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``docker.containers.create`` for a report run: the session's runtime (image, user,
    read-only root, no network, no capabilities, the profile's limits, data read-only) with the papermill runner
    (``docker/notebook/nbl_report.py``) instead of Jupyter, the run's folder as its only writable place, and no
    secret (nothing connects to it)."""
    mem = run.mem_bytes
    spec = {
        "image": run.image or settings.notebook_image,
        "name": report_container_name(settings, run.id),
        "command": [
            "python3",
            "-m",
            "nbl_report",
            f"{REPORT_INPUT}/template.ipynb",
            f"{REPORT_INPUT}/params.json",
            REPORT_OUTPUT,
        ],
        "labels": {
            f"{REPORT_LABEL}.instance": settings.instance,
            f"{REPORT_LABEL}.run": run.id,
            f"{REPORT_LABEL}.user": run.user,
            f"{REPORT_LABEL}.host": run.host or settings.host_name,
            f"{REPORT_LABEL}.template": run.template,
        },
        "user": f"{settings.notebook_uid}:{settings.notebook_gid}",
        "working_dir": REPORT_OUTPUT,
        "hostname": f"report-{run.id}",
        "environment": {
            "PYTHONPATH": LIBRARY_MOUNT,
            "DATA_PATH": "/data",
            "USER_ID": run.user,
            "HOME": "/home/jovyan",
            "USER": "jovyan",
            "LOGNAME": "jovyan",
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
            "NBL_REPORT_RUN": run.id,
        },
        "volumes": {
            str(data if data is not None else settings.data_dir.resolve()): {"bind": "/data", "mode": "ro"},
            str(settings.library_dir.resolve()): {"bind": LIBRARY_MOUNT, "mode": "ro"},
            str(inputs): {"bind": REPORT_INPUT, "mode": "ro"},
            str(output): {"bind": REPORT_OUTPUT, "mode": "rw"},
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
        "nano_cpus": int(run.cpus * 1_000_000_000),
        "cpu_shares": REPORT_CPU_SHARES,
        "mem_limit": mem,
        "memswap_limit": mem,
        "pids_limit": run.pids_limit,
        "init": False,
        "restart_policy": {"Name": "no"},
    }
    return _with_prefix(spec, python_prefix)
