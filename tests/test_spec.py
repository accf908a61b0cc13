"""The container spec is a pure function, checked against a literal dict."""

from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from launcher.models import Session
from launcher.settings import Settings
from launcher.spec import build_container_spec, container_name


def test_container_spec_literal(tmp_path):
    """Mounts, env, limits, labels and security options are exactly what isolation needs: no secret, user or
    session id on the command line or in the environment, the secret's folder read-only, a non-login uid."""
    settings = Settings(
        instance="nbl",
        data_dir=Path("/srv/data"),
        templates_dir=Path("/srv/tpl"),
        library_dir=Path("/srv/lib"),
        notebook_image="img:1",
        tmp_size="1g",
    )
    session = Session(
        id="abcdefghij12",
        user="ann",
        template="alpha_research",
        host="h1",
        name="alpha-research",
        profile="large",
        cpus=4.0,
        mem_bytes=16 * 2**30,
        pids_limit=1024,
        token=SecretStr("tok"),
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    spec = build_container_spec(session, settings, workspace=Path("/w/ann"), rundir=Path("/s/abcdefghij12"))
    assert spec == {
        "image": "img:1",
        "name": "nbl-nb-abcdefghij12",
        "command": [
            "python3",
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.sock=/run/nb/jupyter.sock",
            "--ServerApp.sock_mode=0660",
            "--ServerApp.root_dir=/home/jovyan/work",
            "--ServerApp.identity_provider_class=nbl_identity.EntryPointIdentityProvider",
            "--ServerApp.allow_remote_access=True",
            "--LabApp.extension_manager=readonly",
            "--LabApp.news_url=",
            "--ServerApp.shutdown_no_activity_timeout=0",
        ],
        "labels": {
            "io.nblauncher.instance": "nbl",
            "io.nblauncher.session": "abcdefghij12",
            "io.nblauncher.user": "ann",
            "io.nblauncher.template": "alpha_research",
            "io.nblauncher.host": "h1",
            "io.nblauncher.created": "2026-01-02T03:04:05+00:00",
            "io.nblauncher.name": "alpha-research",
            "io.nblauncher.profile": "large",
            "io.nblauncher.cpus": "4",
            "io.nblauncher.mem_bytes": "17179869184",
            "io.nblauncher.pids_limit": "1024",
        },
        "user": "59000:59000",
        "working_dir": "/home/jovyan/work",
        "hostname": "nb-abcdefghij12",
        "environment": {
            "NBL_AUTH_FILE": "/run/nbl/auth",
            "PYTHONPATH": "/opt/research",
            "DATA_PATH": "/data",
            "USER_ID": "ann",
            "HOME": "/home/jovyan",
            "USER": "jovyan",
            "LOGNAME": "jovyan",
            "SHELL": "/bin/bash",
            "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        },
        "volumes": {
            "/srv/data": {"bind": "/data", "mode": "ro"},
            "/srv/tpl": {"bind": "/templates", "mode": "ro"},
            "/srv/lib": {"bind": "/opt/research", "mode": "ro"},
            "/w/ann": {"bind": "/home/jovyan/work", "mode": "rw"},
            "/s/abcdefghij12/sock": {"bind": "/run/nb", "mode": "rw"},
            "/s/abcdefghij12/secret": {"bind": "/run/nbl", "mode": "ro"},
        },
        "tmpfs": {
            "/tmp": "rw,nosuid,nodev,size=1g,mode=1777",
            "/home/jovyan": "rw,nosuid,nodev,size=1g,uid=59000,gid=59000,mode=0700",
        },
        "read_only": True,
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "nano_cpus": 4_000_000_000,
        "mem_limit": 16 * 2**30,
        "memswap_limit": 16 * 2**30,
        "pids_limit": 1024,
        "init": False,
        "restart_policy": {"Name": "no"},
        "stop_signal": "SIGTERM",
    }


def test_container_name_derives_from_session_id():
    """The same session always maps to the same container name (retries adopt, never duplicate)."""
    s = Settings(instance="abc")
    assert container_name(s, "x1y2z3x1y2z3") == container_name(s, "x1y2z3x1y2z3") == "abc-nb-x1y2z3x1y2z3"


def test_the_data_snapshot_is_what_is_mounted_read_only_at_data():
    """A session's resolved snapshot folder (launcher.snapshots.resolve) replaces the data root at /data."""
    settings = Settings(instance="nbl", data_dir=Path("/srv/data"))
    session = Session(id="abcdefghij12", user="ann", template="alpha_research", token=SecretStr("tok"))
    snap = Path("/srv/data/snapshots/0123456789abcdef/data")
    spec = build_container_spec(session, settings, workspace=Path("/w/ann"), rundir=Path("/s/x"), data=snap)
    assert spec["volumes"][str(snap)] == {"bind": "/data", "mode": "ro"}
    assert [k for k, v in spec["volumes"].items() if v["bind"] == "/data"] == [str(snap)]
