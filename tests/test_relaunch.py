"""Relaunch exactly (issue 13): after the image, the current data snapshot and the template have all moved on, a
relaunch runs the old image, the old snapshot and the old template version, checked from inside the container."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import snapshots
from launcher.errors import InvalidRequest, NotFound
from launcher.models import Actor, Role, SessionStatus
from launcher.spec import container_name
from tests.conftest import IMAGE, docker_or_skip
from tests.helpers import wait_for
from tests.stack import Stack, start_stack

pytestmark = pytest.mark.docker
RUNNING = {SessionStatus.RUNNING}
ADMIN = Actor(name="rl-admin", role=Role.ADMIN)


@pytest.fixture(scope="module")
def rl(workdir: Path, redis_url: str) -> Iterator[Stack]:
    """A stack whose image tag, templates folder and data root are its own, so the test can move all three."""
    client = docker_or_skip()
    folder = workdir / "relaunch"
    templates = folder / "templates"
    templates.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parent.parent / "notebooks" / "templates" / "alpha_research.ipynb", templates)
    tag = f"launcher-notebook:relaunch-{folder.stat().st_ino}"
    client.images.get(IMAGE).tag(tag)
    st = start_stack(folder / "stack", redis_url, client, notebook_image=tag, templates_dir=templates)
    try:
        yield st
    finally:
        st.stop_everything()
        st.shutdown()
        for image in client.images.list(name=tag.split(":")[0]):
            if tag in image.tags:
                client.images.remove(tag, noprune=False)


def _snapshot(st: Stack, which: str) -> str:
    src = st.workdir / f"src-{which}"
    src.mkdir()
    (src / "MANIFEST.json").write_text(json.dumps({"synthetic": True, "which": which}))
    snap, _ = snapshots.create_snapshot(st.settings.data_dir, src)
    snapshots.set_current(st.settings.data_dir, snap)
    return snap


def _inside(st: Stack, session_id: str, *argv: str) -> str:
    container = st.docker.containers.get(container_name(st.settings, session_id))
    code, out = container.exec_run(list(argv), user=f"{st.settings.notebook_uid}:{st.settings.notebook_gid}")
    assert code == 0, out
    return out.decode()


def test_relaunch_exactly_runs_the_old_image_data_and_template(rl: Stack) -> None:
    st = rl
    user = Actor(name="rl-ann", role=Role.RESEARCHER)
    old_snap = _snapshot(st, "A")
    first = st.service.wait(ADMIN, st.service.launch(user, "alpha_research").id, RUNNING, 120)
    assert first.status == SessionStatus.RUNNING, first.error
    record = st.store.get(first.id).record
    assert record["snapshot"] == old_snap and record["image_id"].startswith("sha256:")
    old_template = (st.settings.templates_dir / "alpha_research.ipynb").read_bytes()
    assert record["template_sha256"] == hashlib.sha256(old_template).hexdigest()
    st.service.stop(user)
    st.service.wait(ADMIN, first.id, {SessionStatus.STOPPED}, 60)

    # Everything moves on: a new image under the same tag, new current data, a changed template.
    build = st.workdir / "image-b"
    build.mkdir()
    (build / "Dockerfile").write_text(f"FROM {record['image_id']}\nLABEL nbl.test=relaunch-b\n")
    new_image, _ = st.docker.images.build(path=str(build), tag=st.settings.notebook_image, network_mode="none",
                                          rm=True)
    assert new_image.id != record["image_id"]
    new_snap = _snapshot(st, "B")
    notebook = json.loads(old_template)
    notebook["metadata"]["changed_for_the_test"] = True
    (st.settings.templates_dir / "alpha_research.ipynb").write_text(json.dumps(notebook))
    moved = st.service.wait(ADMIN, st.service.launch(user, "alpha_research").id, RUNNING, 120)
    assert st.store.get(moved.id).record["image_id"] == new_image.id and moved.snapshot == new_snap
    st.service.stop(user)
    st.service.wait(ADMIN, moved.id, {SessionStatus.STOPPED}, 60)

    again = st.service.wait(ADMIN, st.service.relaunch(user, first.id).id, RUNNING, 120)
    assert again.status == SessionStatus.RUNNING, again.error
    assert (again.image, again.snapshot, again.template_sha256) == (
        record["image_id"], old_snap, record["template_sha256"])
    container = st.docker.containers.get(container_name(st.settings, again.id))
    assert container.attrs["Image"] == record["image_id"]  # the old image, not what the tag names now
    assert json.loads(_inside(st, again.id, "cat", "/data/MANIFEST.json"))["which"] == "A"
    pinned = f"/home/jovyan/work/alpha_research@{record['template_sha256'][:12]}.ipynb"
    assert _inside(st, again.id, "sha256sum", pinned).split()[0] == record["template_sha256"]
    assert st.store.get(again.id).record["template_sha256"] == record["template_sha256"]
    events = [e for e in st.store.audit(limit=50) if e.action == "relaunch"]
    assert events and events[0].detail == f"{again.id} from {first.id}"

    with pytest.raises(NotFound):
        st.service.relaunch(Actor(name="rl-bob", role=Role.RESEARCHER), first.id)  # not theirs
    st.service.stop(user)
    wait_for(lambda: st.store.get(again.id).status == SessionStatus.STOPPED, 60, "the relaunch to stop")


def test_relaunch_needs_a_record(rl: Stack) -> None:
    """A session that never started has no record to relaunch from: a clear refusal, nothing recorded."""
    st = rl
    st.store.set_draining(st.settings.host_name, True)
    try:
        waiting = st.service.launch(Actor(name="rl-cyd", role=Role.RESEARCHER), "alpha_research")
        assert waiting.status == SessionStatus.WAITING
        with pytest.raises(InvalidRequest, match="no complete record"):
            st.service.relaunch(ADMIN, waiting.id)
        st.service.stop(ADMIN, session_id=waiting.id)
    finally:
        st.store.set_draining(st.settings.host_name, False)
