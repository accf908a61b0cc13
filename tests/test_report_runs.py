"""Report runs on a real stack (issue 13): a template runs unattended in the notebook runtime through papermill
and keeps its artifacts and record; a failing cell is shown; the isolation probes run inside a report's own
container; a reproduction gives the same results and a changed snapshot is flagged as drift; a schedule runs
through a real Celery Beat."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import snapshots
from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.redis_reports import ReportStore
from launcher.models import Actor, Role
from launcher.report_service import ReportService
from launcher.reports import ReportStatus
from launcher.spec import REPORT_LABEL
from tests.conftest import docker_or_skip
from tests.helpers import wait_for
from tests.stack import Stack, start_beat, start_stack, start_worker

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent
ANN = Actor(name="rep-ann", role=Role.RESEARCHER)
BOB = Actor(name="rep-bob", role=Role.RESEARCHER)


def notebook(*cells: str, tolerance: float | None = None) -> str:
    """A template: a parameters cell, then ``cells``."""
    meta: dict[str, object] = {"title": "probe"} | ({"tolerance": tolerance} if tolerance is not None else {})
    params = 'data_root = "/data"\noutput_dir = "/home/jovyan/work/output"\nscale = 1.0\n'
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "launcher": meta,
            },
            "cells": [
                {
                    "id": "p",
                    "cell_type": "code",
                    "metadata": {"tags": ["parameters"]},
                    "execution_count": None,
                    "outputs": [],
                    "source": params,
                }
            ]
            + [
                {
                    "id": f"c{i}",
                    "cell_type": "code",
                    "metadata": {},
                    "execution_count": None,
                    "outputs": [],
                    "source": c,
                }
                for i, c in enumerate(cells)
            ],
        }
    )


RESULTS = """
import json, pathlib
out = pathlib.Path(output_dir); out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps(results))
"""

# Reads a file of the data snapshot: its sum is the result (a changed snapshot changes it).
SUMS = notebook(
    "import pathlib\nvalues = [float(x) for x in pathlib.Path(data_root, 'probe', 'values.txt').read_text().split()]\n"
    "results = {'sum': sum(values) * scale, 'n': len(values)}",
    RESULTS,
    tolerance=1e-12,
)

BROKEN = notebook("x = 1\nprint('before the failure')", "ratio = x / 0  # the failing cell", "print('never')")

# The isolation probes, from inside the report's own container; each records what happened.
PROBES = notebook(
    """
import errno, os, pathlib, socket
def attempt(fn):
    try:
        fn()
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def udp_route():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("1.1.1.1", 53)); s.close()
def tcp(addr):
    def go():
        s = socket.create_connection((addr, 6379), timeout=2); s.close()
    return go
status = pathlib.Path("/proc/self/status").read_text()
cap_eff = [line.split()[1] for line in status.splitlines() if line.startswith("CapEff")][0]
no_new_privs = [line.split()[1] for line in status.splitlines() if line.startswith("NoNewPrivs")][0]
mem_limit = ""
for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    if os.path.exists(path):
        mem_limit = open(path).read().strip()
results = {
    "uid": os.getuid(),
    "cap_eff": cap_eff,
    "no_new_privs": no_new_privs,
    "write_data": attempt(lambda: open("/data/x", "w")),
    "write_root": attempt(lambda: open("/etc/x", "w")),
    "write_library": attempt(lambda: open("/opt/research/x", "w")),
    "udp_route_out": attempt(udp_route),
    "tcp_host": {a: attempt(tcp(a)) for a in HOSTS},
    "home_listing": sorted(os.listdir("/home/jovyan")),
    "work_listing": sorted(os.listdir("/home/jovyan/work")),
    "mem_limit": mem_limit,
    "env_secret": sorted(k for k in os.environ if "TOKEN" in k or "SECRET" in k or k.startswith("NBL_AUTH")),
}
""",
    RESULTS,
)


@pytest.fixture(scope="module")
def rs(workdir: Path, redis_url: str) -> Iterator[tuple[Stack, ReportService]]:
    client = docker_or_skip()
    folder = workdir / "reports"
    templates = folder / "templates"
    templates.mkdir(parents=True)
    (templates / "sums.ipynb").write_text(SUMS)
    (templates / "broken.ipynb").write_text(BROKEN)
    (templates / "alpha_research.ipynb").write_bytes((ROOT / "notebooks/templates/alpha_research.ipynb").read_bytes())
    st = start_stack(
        folder / "stack",
        redis_url,
        client,
        templates_dir=templates,
        report_schedule_min_s=2.0,
        report_schedule_tick_s=1.0,
        report_timeout_s=300.0,
        report_output_max="64m",
    )
    try:
        data = snapshots.resolve(st.settings.data_dir, "")[1] / "probe"
        data.mkdir()
        (data / "values.txt").write_text("1.5 2.5 3.25\n")
        service = ReportService(
            st.settings, ReportStore(st.store), st.store, CeleryDispatcher.from_settings(st.settings)
        )
        yield st, service
    finally:
        st.shutdown()


def finished(service: ReportService, run_id: str, timeout: float = 240):
    return service.wait(ANN if service.store.require(run_id).user == ANN.name else BOB, run_id, timeout)


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_a_template_runs_as_a_report_with_its_artifacts_and_record(rs) -> None:
    st, service = rs
    run = finished(service, service.run(ANN, "alpha_research", {"fast": "true"}).id, 400)
    assert run.status == ReportStatus.SUCCEEDED, (run.error, run.cell_error)
    folder = st.settings.reports_dir / ANN.name / run.id
    assert {"notebook.ipynb", "notebook.html", "output/results.json"} <= set(run.artifacts)
    for path, sha in run.artifacts.items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == sha
    assert run.results == json.loads((folder / "output/results.json").read_text()) and "rank_ic_rdq" in run.results
    html = (folder / "notebook.html").read_text()
    assert "data:image/png;base64" in html  # the charts are in the rendering
    executed = json.loads((folder / "notebook.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and "fast = True" in "".join(injected[0]["source"])
    record = run.record
    template_sha = hashlib.sha256((st.settings.templates_dir / "alpha_research.ipynb").read_bytes()).hexdigest()
    image = st.docker.images.get(st.settings.notebook_image)
    assert record["image_id"] == image.id and record["lock_sha256"] == image.labels["nbl.lock_sha256"]
    assert record["template_sha256"] == template_sha and record["snapshot"] == run.snapshot != ""
    assert record["run"] == run.id and record["user"] == ANN.name and record["profile"] == "standard"
    assert record["library_version"] and json.loads(record["params"]) == {"fast": True}
    events = [e for e in st.store.audit(user=ANN.name, limit=20) if run.id in e.detail]
    assert [e.action for e in events][:4] == ["report_ended", "report_provenance", "report_started", "report_requested"]
    assert json.loads(events[1].detail.split(" ", 3)[3]) == record  # the record, in the audit trail
    kept = folder / ".launcher" / f"{run.id}.json"  # and beside the artifacts
    assert json.loads(kept.read_text()) == record and f".launcher/{run.id}.json" in run.artifacts
    assert not st.docker.containers.list(all=True, filters={"label": f"{REPORT_LABEL}.run={run.id}"})


def test_a_failing_report_shows_its_failing_cell(rs) -> None:
    st, service = rs
    run = finished(service, service.run(ANN, "broken").id)
    assert run.status == ReportStatus.FAILED
    cell = run.cell_error
    assert cell is not None and cell.ename == "ZeroDivisionError" and "x / 0" in cell.source
    assert "division by zero" in cell.evalue and "\x1b[" not in cell.traceback
    assert run.error == f"cell {cell.cell} raised ZeroDivisionError"
    assert "notebook.html" in run.artifacts  # the rendering shows where it stopped


def test_isolation_holds_inside_a_report(rs) -> None:
    st, service = rs
    (st.settings.templates_dir / "probes.ipynb").write_text(
        PROBES.replace("HOSTS", json.dumps(host_addresses()).replace('"', "'"))
    )
    (st.settings.workspaces_dir / BOB.name).mkdir(parents=True, exist_ok=True)
    (st.settings.workspaces_dir / BOB.name / "private.txt").write_text("bob's")
    run = finished(service, service.run(ANN, "probes").id)
    assert run.status == ReportStatus.SUCCEEDED, (run.error, run.cell_error)
    r = run.results
    assert r["uid"] == st.settings.notebook_uid and r["cap_eff"] == "0000000000000000" and r["no_new_privs"] == "1"
    assert r["write_data"] in {"EROFS", "EACCES"} and r["write_root"] == "EROFS" and r["write_library"] == "EROFS"
    assert r["udp_route_out"] == "ENETUNREACH"
    assert all(v != "OK" for v in r["tcp_host"].values()), r["tcp_host"]
    assert set(r["work_listing"]) <= {"notebook.ipynb", "output"}  # the run's folder only, no workspace
    assert [n for n in r["home_listing"] if not n.startswith(".")] == ["work"]  # the kernel's own tmpfs home
    assert r["mem_limit"] == str(st.settings.profile(None).mem_bytes)
    assert r["env_secret"] == []


def test_reproduce_is_the_same_and_a_changed_snapshot_drifts(rs) -> None:
    st, service = rs
    original = finished(service, service.run(ANN, "sums", {"scale": "2"}).id)
    assert original.status == ReportStatus.SUCCEEDED and original.results == {"sum": 14.5, "n": 3}
    again = finished(service, service.reproduce(ANN, original.id).id)
    assert again.drift is not None and again.drift.same, again.drift
    assert again.record["snapshot"] == original.record["snapshot"] and again.results == original.results
    assert again.record["image_id"] == original.record["image_id"]
    assert service.store.get(original.id).checked == again.id

    # Someone changes the snapshot's data in place (snapshots are meant to be immutable): the re-run drifts.
    snap = snapshots.resolve(st.settings.data_dir, original.record["snapshot"])[1] / "probe" / "values.txt"
    snap.write_text("1.5 2.5 3.5\n")
    drifted = finished(service, service.reproduce(ANN, original.id).id)
    assert drifted.status == ReportStatus.SUCCEEDED and drifted.drift is not None and not drifted.drift.same
    assert drifted.drift.differences == ["sum: 14.5 -> 15.0"]
    events = [e for e in st.store.audit(user=ANN.name, limit=30) if e.action == "report_drift"]
    assert events and drifted.id in events[0].detail

    # The CLI says the same (exit 10 on drift), as an operator would run it.
    env = {**os.environ, **st.settings.to_env(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "reproduce", original.id, "--timeout", "240"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 10, done.stdout + done.stderr
    assert "DRIFT" in done.stdout and "sum: 14.5 -> 15.0" in done.stdout


def test_a_schedule_runs_through_beat(rs) -> None:
    st, service = rs
    (st.workdir / "beat").mkdir(exist_ok=True)
    beat = start_beat(st.settings, st.workdir / "beat", "report-beat")
    try:
        schedule = service.add_schedule(BOB, "sums", "2s")
        runs = wait_for(
            lambda: [r for r in service.runs(BOB) if r.schedule == schedule.id and r.status.done],
            90,
            "a scheduled run to finish",
        )
        assert runs[0].status == ReportStatus.SUCCEEDED and runs[0].requested_by == f"schedule:{schedule.id}"
        service.remove_schedule(BOB, schedule.id)
    finally:
        beat.stop()


def test_a_run_whose_worker_dies_ends_failed_with_its_container_removed(rs) -> None:
    """No run stuck: the worker SIGKILLed mid-run; when a worker comes back, the run is failed with a reason and
    its container is gone."""
    st, service = rs
    (st.settings.templates_dir / "slow.ipynb").write_text(notebook("import time\ntime.sleep(120)"))
    run = service.run(ANN, "slow")
    label = {"label": f"{REPORT_LABEL}.run={run.id}"}
    wait_for(
        lambda: (
            service.store.require(run.id).status == ReportStatus.RUNNING and st.docker.containers.list(filters=label)
        ),
        120,
        "the run to be running in its container",
    )
    st.worker.kill()
    st.worker = start_worker(st.settings, st.workdir / "worker-after-kill.log", f"w2-{st.settings.instance}")
    ended = finished(service, run.id, 120)
    assert ended.status == ReportStatus.FAILED and ended.error == "its worker stopped during the run"
    assert not st.docker.containers.list(all=True, filters=label)


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (
            "import pathlib, time\nfor i in range(400):\n    pathlib.Path(f'big{i}.bin').write_bytes(bytes(2**20))\n"
            "time.sleep(60)",
            "more than 64m",
        ),
        (
            "import pathlib, time\nfor i in range(6000):\n    pathlib.Path(f'f{i}').touch()\ntime.sleep(60)",
            "over 5000 files",
        ),
    ],
)
def test_a_run_that_fills_its_folder_is_stopped(rs, code, why) -> None:
    """What a report writes is bounded while it runs: bytes and files, checked every second."""
    st, service = rs
    (st.settings.templates_dir / "filler.ipynb").write_text(notebook(code))
    ended = finished(service, service.run(BOB, "filler").id, 120)
    assert ended.status == ReportStatus.FAILED and ended.error == f"the run wrote {why} to its folder and was stopped"
    assert not st.docker.containers.list(all=True, filters={"label": f"{REPORT_LABEL}.run={ended.id}"})
