"""Data snapshots and the record on a real stack (Redis, a Celery worker, Docker, the entry point).

Two sessions pinned to two snapshots see different /data, read-only; the record is on the session, in the audit
entry and in the workspace file, and matches what is inside the container (its image, /etc/nbl/lock.sha256, the
template)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from launcher import snapshots
from launcher.models import Session, SessionStatus, new_session_id, new_token
from launcher.provenance import RECORD_FIELDS
from launcher.views import session_view
from tests.stack import Stack, start_stack

pytestmark = pytest.mark.docker

RUNNING = {SessionStatus.RUNNING}


@pytest.fixture(scope="module")
def prov(workdir: Path, redis_url: str) -> Iterator[Stack]:
    """A stack of its own: its data root is turned into snapshots here (the shared stack's stays legacy)."""
    from tests.conftest import IMAGE, docker_or_skip

    st = start_stack(workdir / "provenance", redis_url, docker_or_skip(), notebook_image=IMAGE)
    try:
        yield st
    finally:
        st.stop_everything()
        st.shutdown()


def _data(folder: Path, which: str) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "MANIFEST.json").write_text(json.dumps({"synthetic": True, "which": which}))
    (folder / "sub" / "marker.txt").write_text(f"snapshot {which}\n")
    return folder


def _exec(st: Stack, session_id: str, *argv: str) -> tuple[int, str]:
    [container] = st.containers(session=session_id)
    code, out = container.exec_run(list(argv), user=f"{st.settings.notebook_uid}:{st.settings.notebook_gid}")
    return code, out.decode(errors="replace")


def _launch_pinned(st: Stack, user: str, snapshot: str) -> Session:
    """A launch pinned to ``snapshot`` (the service's launch takes no snapshot yet: through the store and the
    dispatcher, as ``LauncherService.launch`` does)."""
    profile = st.settings.profile("standard")
    session = Session(
        id=new_session_id(),
        user=user,
        template="alpha_research",
        name="pinned",
        cpus=profile.cpus,
        mem_bytes=profile.mem_bytes,
        pids_limit=profile.pids_limit,
        token=new_token(),
        snapshot=snapshot,
    )
    session, admitted = st.store.launch(session, actor=f"user:{user}")
    assert [s.id for s in admitted] == [session.id]
    st.service.dispatcher.start(admitted[0])
    return session


def test_sessions_pinned_to_two_snapshots_see_different_data_and_record_what_they_run_on(prov: Stack):
    st = prov
    root = st.settings.data_dir
    assert snapshots.resolve(root, "")[0] == "legacy"  # the stack's sample data: the layout before snapshots
    a, _ = snapshots.create_snapshot(root, _data(st.workdir / "src-a", "A"))
    b, _ = snapshots.create_snapshot(root, _data(st.workdir / "src-b", "B"))
    assert a != b
    snapshots.set_current(root, a)

    ann, bob, cid = st.actor("prov-ann"), st.actor("prov-bob"), st.actor("prov-cid")
    first = st.service.wait(ann, st.service.launch(ann, "alpha_research").id, RUNNING, 120)  # current: a
    assert first.status == SessionStatus.RUNNING, first.error
    snapshots.set_current(root, b)  # current moves on: the running session keeps a
    second = st.service.wait(bob, st.service.launch(bob, "alpha_research").id, RUNNING, 120)  # current: b
    assert second.status == SessionStatus.RUNNING, second.error
    pinned = st.service.wait(cid, _launch_pinned(st, "prov-cid", a).id, RUNNING, 120)  # pinned to a explicitly
    assert pinned.status == SessionStatus.RUNNING, pinned.error
    assert (first.snapshot, second.snapshot, pinned.snapshot) == (a, b, a)

    for session, which in ((first, "A"), (second, "B"), (pinned, "A")):
        code, out = _exec(st, session.id, "cat", "/data/sub/marker.txt", "/data/MANIFEST.json")
        assert code == 0 and out.startswith(f"snapshot {which}\n"), out
        assert json.loads(out.split("\n", 1)[1])["which"] == which
        code, out = _exec(st, session.id, "sh", "-c", "echo x > /data/sub/new.txt")
        assert code != 0 and "Read-only file system" in out, out  # read-only, whatever the file modes
        _check_record(st, session)

    # A snapshot that does not exist: the start fails with a reason its owner can read, nothing is mounted.
    carl = st.actor("prov-carl")
    missing = st.service.wait(carl, _launch_pinned(st, "prov-carl", "0123456789abcdef").id, {SessionStatus.ERROR}, 60)
    assert missing.status == SessionStatus.ERROR and "no data snapshot 0123456789abcdef" in (missing.error or "")
    assert st.containers(session=missing.id) == []

    # Pruning keeps what session records in Redis name, and current; an unreferenced snapshot goes.
    c, _ = snapshots.create_snapshot(root, _data(st.workdir / "src-c", "C"))
    referenced = snapshots._referenced_by_records(st.settings)
    assert {a, b} <= referenced and c not in referenced
    plan = snapshots.plan_prune(
        snapshots.list_snapshots(root), current=snapshots.read_current(root), referenced=referenced, keep_recent=0
    )
    assert {s.id for s, remove, _ in plan if remove} == {c}


def _check_record(st: Stack, session: Session) -> None:
    session = st.store.require(session.id)
    record = session.record
    assert set(record) == set(RECORD_FIELDS) and record["snapshot"] == session.snapshot
    assert (record["session"], record["user"], record["template"]) == (session.id, session.user, "alpha_research")
    assert (record["profile"], record["cpus"], record["mem_bytes"], record["pids_limit"]) == (
        session.profile,
        f"{session.cpus:g}",
        str(session.mem_bytes),
        str(session.pids_limit),
    )
    assert record["library_version"].startswith(("sha256:", "v"))
    assert datetime.fromisoformat(record["recorded_at"]) <= datetime.now(UTC)

    # What the container runs: its image, the lockfile hash inside it, the template it was given.
    [container] = st.containers(session=session.id)
    assert record["image_id"] == container.attrs["Image"] and record["image_id"].startswith("sha256:")
    assert record["lock_sha256"] == st.docker.images.get(record["image_id"]).labels["nbl.lock_sha256"]
    code, out = _exec(st, session.id, "cat", "/etc/nbl/lock.sha256")
    assert code == 0 and out.split()[0] == record["lock_sha256"], out
    code, out = _exec(st, session.id, "sha256sum", "/templates/alpha_research.ipynb")
    assert code == 0 and out.split()[0] == record["template_sha256"], out
    template = st.settings.templates_dir / "alpha_research.ipynb"
    assert hashlib.sha256(template.read_bytes()).hexdigest() == record["template_sha256"]

    # In the audit: the "provenance" entry's detail is the record as compact JSON.
    entries = [e for e in st.store.audit(user=session.user, limit=200) if e.session_id == session.id]
    [entry] = [e for e in entries if e.action == "provenance"]
    assert json.loads(entry.detail) == record and entry.actor == f"worker:{st.settings.host_name}"
    assert entry.previous == "starting"

    # In the workspace, owned by the notebook uid, and readable inside the notebook at ~/work/.launcher/.
    path = st.settings.workspaces_dir / session.user / ".launcher" / f"{session.id}.json"
    assert json.loads(path.read_text()) == record
    assert os.lstat(path).st_uid == st.settings.notebook_uid and not path.is_symlink()
    code, out = _exec(st, session.id, "cat", f"/home/jovyan/work/.launcher/{session.id}.json")
    assert code == 0 and json.loads(out) == record

    # What the owner and admins see.
    view = session_view(session, st.settings, datetime.now(UTC))
    assert view.record == record and tuple(view.record) == RECORD_FIELDS  # in reading order
    assert st.service.get(st.actor(session.user), session.id).record == record
