"""The image's Python packages from a host copy (issue 12, a faster cold path): copied out of the image once per
host, bound read-only into its containers, never writable from inside, and removed when the image is gone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from launcher.images import prune_host_copies
from launcher.models import Session, SessionStatus
from launcher.spec import IMAGE_PACKAGES, build_container_spec, container_name
from tests.conftest import IMAGE, docker_or_skip
from tests.helpers import Kernel, wait_for
from tests.stack import start_stack
from tests.test_isolation import errno_of, run
from tests.web import opened
from workers import labstatic, pyprefix


def test_the_spec_binds_the_host_copy_read_only_over_the_images_packages(unit_settings, tmp_path: Path) -> None:
    session = Session(id="abcdefabcdef", user="ann", template="alpha_research", token=SecretStr("t" * 43))
    plain = build_container_spec(session, unit_settings, workspace=tmp_path / "w", rundir=tmp_path / "r")
    assert IMAGE_PACKAGES not in [v["bind"] for v in plain["volumes"].values()]
    bound = build_container_spec(
        session, unit_settings, workspace=tmp_path / "w", rundir=tmp_path / "r", python_prefix=tmp_path / "p"
    )
    assert bound["volumes"][str(tmp_path / "p")] == {"bind": IMAGE_PACKAGES, "mode": "ro"}


def test_no_copy_and_no_bind_when_it_is_off(unit_settings) -> None:
    assert not unit_settings.python_prefix_bind
    assert pyprefix.ready(unit_settings, object(), IMAGE) is None  # type: ignore[arg-type] - never asked
    assert not unit_settings.python_prefix_dir.exists()


def test_pruning_removes_only_copies_of_images_that_are_gone(tmp_path: Path) -> None:
    kept, gone = "a" * 16, "b" * 16
    for base in (tmp_path / "lab", tmp_path / "py"):
        for name in (kept, gone, ".lock-dir", f".{gone}.1.tmp"):
            (base / name).mkdir(parents=True)
    removed = prune_host_copies([tmp_path / "lab", tmp_path / "py", tmp_path / "absent"], ["sha256:" + "a" * 64])
    assert sorted(removed) == [tmp_path / "lab" / gone, tmp_path / "py" / gone]
    for base in (tmp_path / "lab", tmp_path / "py"):
        assert sorted(p.name for p in base.iterdir()) == sorted([kept, ".lock-dir", f".{gone}.1.tmp"])


@pytest.mark.docker
def test_a_session_imports_from_the_read_only_host_copy(workdir: Path, redis_url: str) -> None:
    client = docker_or_skip()
    st = start_stack(workdir / "pyprefix", redis_url, client, notebook_image=IMAGE, python_prefix_bind=True)
    try:
        key = labstatic.key_of(st.runtime.image_id(IMAGE))
        folder = st.settings.python_prefix_dir / key
        # The worker starts the copy when it starts; nothing waits for it.
        wait_for(folder.is_dir, 600, "the worker to copy the image's packages")
        assert not list(st.settings.python_prefix_dir.glob(".*.tmp"))
        info = folder.stat()
        assert info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        # The image's modification times are kept: compiled bytecode is valid only for its source's mtime (without
        # them every import recompiled its module, in a read-only folder, at every start: slower than before).
        source = folder / "jupyterlab" / "__init__.py"
        header = (folder / "jupyterlab" / "__pycache__" / "__init__.cpython-311.pyc").read_bytes()[:16]
        assert int.from_bytes(header[4:8], "little") == 0  # a timestamp-checked pyc
        assert int.from_bytes(header[8:12], "little") == int(source.stat().st_mtime)

        user = st.actor("prefix-ann")
        session = st.service.wait(user, st.service.launch(user, "alpha_research").id, {SessionStatus.RUNNING}, 120)
        assert session.status == SessionStatus.RUNNING, session.error
        container = client.containers.get(container_name(st.settings, session.id))
        [mount] = [m for m in container.attrs["Mounts"] if m["Destination"] == IMAGE_PACKAGES]
        assert mount["Source"] == str(folder) and mount["RW"] is False

        web = opened(st, session.id, user.name)
        kernel = Kernel(web)
        try:
            # From inside: the packages are the copy, read-only, and work (the research stack imports).
            options = run(
                kernel,
                f"print([l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == {IMAGE_PACKAGES!r}])",
            )
            assert options.startswith("['ro,"), options
            assert errno_of(kernel, f"open({IMAGE_PACKAGES + '/sitecustomize.py'!r}, 'w')") in {"EROFS", "EACCES"}
            assert errno_of(kernel, f"os.remove({IMAGE_PACKAGES + '/polars/__init__.py'!r})") in {"EROFS", "EACCES"}
            where = run(kernel, "import polars, jupyterlab; print(polars.__file__, len(polars.DataFrame({'a': [1, 2]})))")
            assert where == f"{IMAGE_PACKAGES}/polars/__init__.py 2", where
        finally:
            kernel.close()
            web.close()
        st.service.stop(user, session_id=session.id)
        name = container_name(st.settings, session.id)
        wait_for(lambda: not [c for c in st.containers() if c.name == name], 60, "the container to go")
        assert folder.is_dir()  # the copy stays for the next container of this image
    finally:
        st.stop_everything()
        st.shutdown()
