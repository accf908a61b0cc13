"""The operator CLI, run as a subprocess against the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launcher.settings import REPO_ROOT
from tests.web import opened

pytestmark = pytest.mark.docker


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=240,
    )


def test_cli_start_status_stop(clean_stack):
    """start --wait --json gives the record with its origin and Open link (no secret anywhere); stop stops."""
    st = clean_stack
    res = cli(st, "start", "--user", "cli-user", "--service-account", "--template", "alpha_research", "--wait", "--json")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["status"] == "running" and record["container_id"] and record["user"] == "cli-user"
    assert record["url"] == st.settings.session_origin(record["id"])
    assert record["open_url"] == record["url"] + "/_nbl/start"
    token = st.store.get(record["id"]).token.get_secret_value()
    assert token not in res.stdout and token not in res.stderr
    client = opened(st, record["id"], "cli-user")
    assert client.get("/api/status").status_code == 200
    client.close()

    status = cli(st, "status", "--user", "cli-user", "--json")
    assert status.returncode == 0 and token not in status.stdout
    assert json.loads(status.stdout)["status"] == "running"
    listing = cli(st, "status")
    assert "cli-user" in listing.stdout and token not in listing.stdout

    again = cli(st, "start", "--user", "cli-user", "--service-account", "--template", "alpha_research")
    assert again.returncode == 5 and "you may run 1 session at once" in again.stderr  # the per-user limit

    stop = cli(st, "stop", "--user", "cli-user", "--wait", "--json")
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["status"] == "stopped"
    missing = cli(st, "stop", "--user", "cli-user")
    assert (
        missing.returncode == 6 and missing.stderr.strip() == "launcher: error: cli-user has no live notebook session"
    )

    audit = cli(st, "audit", "--user", "cli-user")
    assert audit.returncode == 0 and "stopped" in audit.stdout and token not in audit.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["start", "--user", "../x", "--template", "alpha_research"], 2, "invalid user id"),
        (["start", "--user", "ok", "--service-account", "--template", "../alpha_research"], 2, "invalid template name"),
        (["start", "--user", "ok", "--service-account", "--template", "nope"], 2, "unknown template 'nope'"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_one_line(clean_stack, args, code, message):
    """Bad input exits with the error's code and one line on stderr, creating nothing."""
    res = cli(clean_stack, *args)
    assert res.returncode == code
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr
    assert clean_stack.store.count_live() == 0


def test_cli_hosts_queue_drain_and_no_queue(clean_stack):
    """`launcher hosts` shows the registered host; drained, it takes no launch: `--no-queue` is refused (exit 5),
    a launch without it waits in the queue (`launcher queue` lists it) until cancelled with `stop --session`."""
    st = clean_stack
    host = st.settings.host_name
    listed = cli(st, "hosts")
    assert listed.returncode == 0 and listed.stdout.startswith(host) and " up " in listed.stdout
    assert cli(st, "hosts", "drain", host).returncode == 0
    try:
        assert json.loads(cli(st, "hosts", "--json").stdout)[0]["state"] == "draining"
        refused = cli(st, "start", "--user", "cli-q", "--service-account", "--template", "alpha_research", "--no-queue")
        assert refused.returncode == 5 and "no Docker host has room" in refused.stderr
        assert st.store.latest_session_for("cli-q") is None  # refused: nothing recorded
        queued = cli(st, "start", "--user", "cli-q", "--service-account", "--template", "alpha_research", "--json")
        assert queued.returncode == 0, queued.stderr
        record = json.loads(queued.stdout)
        assert record["status"] == "waiting" and record["host"] is None
        queue = cli(st, "queue")
        assert queue.returncode == 0 and record["id"] in queue.stdout and "1 waiting" in queue.stdout
        cancelled = cli(st, "stop", "--session", record["id"], "--json")
        assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "stopped"
        assert cli(st, "hosts", "drain", "no-such-host").returncode == 6
    finally:
        assert cli(st, "hosts", "undrain", host).returncode == 0
