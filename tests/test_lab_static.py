"""JupyterLab's assets from one shared origin (issue 12): copied out of the notebook image once, served by the real
entry point on static.<domain> as public immutable files, and used by every session's JupyterLab page."""

from __future__ import annotations

import fcntl
import http.client
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.adapters.docker_runtime import DockerRuntime
from launcher.models import SessionStatus
from tests.conftest import IMAGE, docker_or_skip, random_instance
from tests.helpers import free_port
from tests.stack import start_entrypoint
from tests.web import opened
from workers import labstatic


def _tar(*members: tuple[str, bytes | None, bytes]) -> Iterator[bytes]:
    """A tar stream of (name, content or None for a folder, type) members, in chunks as docker-py yields them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            if content is not None:
                info.size = len(content)
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    data = buffer.getvalue()
    return iter([data[i : i + 700] for i in range(0, len(data), 700)])


GOOD = [
    ("static", None, tarfile.DIRTYPE),
    ("static/index.html", b"<html>", tarfile.REGTYPE),
    ("static/sub", None, tarfile.DIRTYPE),
    ("static/sub/a.js", b"x" * 5000, tarfile.REGTYPE),
]


def test_extraction_takes_regular_files_below_the_folder_only(tmp_path: Path) -> None:
    assert labstatic.extract(_tar(*GOOD), tmp_path / "ok") == 5006
    assert (tmp_path / "ok" / "sub" / "a.js").read_bytes() == b"x" * 5000
    for bad, why in [
        (("static/evil", b"", tarfile.SYMTYPE), "not a regular file"),
        (("static/../escape.js", b"x", tarfile.REGTYPE), "unexpected name"),
        (("other/x.js", b"x", tarfile.REGTYPE), "unexpected name"),
        (("static/dev", None, tarfile.CHRTYPE), "not a regular file"),
    ]:
        dest = tmp_path / f"bad-{why[:3]}-{len(list(tmp_path.iterdir()))}"
        with pytest.raises(ValueError, match=why):
            labstatic.extract(_tar(*GOOD, bad), dest)
    assert not (tmp_path / "escape.js").exists() and not (tmp_path.parent / "escape.js").exists()


def _raw_get(port: int, host: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A request whose path is sent as written (no client-side normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@pytest.mark.docker
def test_precompress_removes_temporary_files_a_killed_compress_left_but_not_one_being_written(tmp_path: Path) -> None:
    (tmp_path / "main.abc.js").write_text("function f() { return 1; }\n" * 200)
    left = tmp_path / ".main.old.js.br.4242.4242.tmp"  # a compress killed midway, long ago
    left.write_bytes(b"half")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    writing = tmp_path / ".main.new.js.br.4343.4343.tmp"  # another worker's, being written now
    writing.write_bytes(b"half")
    assert labstatic.precompress(tmp_path) == 1
    assert not left.exists() and writing.exists()
    assert (tmp_path / "main.abc.js.br").is_file()


def test_the_image_assets_are_copied_once_and_served_as_public_immutable_files(workdir: Path, unit_settings) -> None:
    docker_or_skip()
    base = workdir / f"lab-static-{random_instance()}"
    base.mkdir(mode=0o755)
    port = free_port()
    settings = unit_settings.model_copy(
        update={
            "lab_static_dir": base / "lab-static",
            "sessions_dir": base / "sessions",
            "notebook_image": IMAGE,
            "public_url": f"http://nb.localhost:{port}",
            "entrypoint_listen": f"127.0.0.1:{port}",
        }
    )
    settings.sessions_dir.mkdir(mode=0o711)
    runtime = DockerRuntime()
    url = labstatic.ensure(settings, runtime, IMAGE)
    key = labstatic.key_of(runtime.image_id(IMAGE))
    assert url == f"http://static.nb.localhost:{port}/lab/{key}/"
    folder = settings.lab_static_dir / key
    main = next(folder.glob("main.*.js"))
    stamp = (folder / "index.html").stat().st_mtime_ns
    assert labstatic.ensure(settings, runtime, IMAGE) == url  # the copy is made once
    assert (folder / "index.html").stat().st_mtime_ns == stamp and not list(settings.lab_static_dir.glob(".*tmp"))

    nginx = start_entrypoint(settings, base / "nginx")
    host = f"static.nb.localhost:{port}"
    try:
        ok = httpx.get(
            f"http://127.0.0.1:{port}/lab/{key}/{main.name}",
            headers={"Host": host, "Accept-Encoding": "gzip", "Cookie": "__Host-nbl=x"},
        )
        assert ok.status_code == 200 and ok.content == main.read_bytes()
        assert ok.headers["content-type"] == "application/javascript" and ok.headers["content-encoding"] == "gzip"
        assert ok.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert ok.headers["access-control-allow-origin"] == "*" and ok.headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in ok.headers
        # Precompressed with brotli once (the worker does it in the background), served to browsers that take it.
        assert labstatic.precompress(folder) >= 1 and (folder / f"{main.name}.br").is_file()
        assert labstatic.precompress(folder) == 0  # once
        assert not list(folder.glob(".*.tmp"))
        br = httpx.get(
            f"http://127.0.0.1:{port}/lab/{key}/{main.name}", headers={"Host": host, "Accept-Encoding": "br, gzip"}
        )
        assert br.status_code == 200 and br.headers["content-encoding"] == "br"
        assert br.content == main.read_bytes()  # httpx decodes brotli
        assert br.headers["content-type"] == "application/javascript" and "accept-encoding" in br.headers["vary"].lower()
        assert int(br.headers["content-length"]) == (folder / f"{main.name}.br").stat().st_size
        assert br.headers["cache-control"] == "public, max-age=31536000, immutable"
        font = next(folder.glob("*.woff2"), None) or next(folder.glob("*.woff"))
        assert _raw_get(port, host, f"/lab/{key}/{font.name}")[1]["content-type"].startswith("font/")

        (base / "outside.txt").write_text("not an asset")
        (folder / "link.txt").symlink_to(base / "outside.txt")
        refusals = {
            "a symlink": _raw_get(port, host, f"/lab/{key}/link.txt"),
            "a listing": _raw_get(port, host, f"/lab/{key}/"),
            "dot-dot": _raw_get(port, host, f"/lab/{key}/../../outside.txt"),
            "encoded dot-dot": _raw_get(port, host, f"/lab/{key}/%2e%2e/%2e%2e/outside.txt"),
            "another key": _raw_get(port, host, "/lab/0123456789abcdef/index.html"),
            "a POST": _raw_get(port, host, f"/lab/{key}/{main.name}", method="POST"),
            "elsewhere": _raw_get(port, host, "/sessions/"),
        }
        for what, (status, _, body) in refusals.items():
            assert status in (403, 404, 405), (what, status)
            assert b"not an asset" not in body, what
        # A session origin does not serve the shared folder, and the static origin proxies to no session.
        assert _raw_get(port, f"abcdefabcdef.nb.localhost:{port}", f"/lab/{key}/{main.name}")[0] != 200
    finally:
        nginx.stop()


@pytest.mark.docker
def test_a_sessions_jupyterlab_loads_its_assets_from_the_shared_origin(clean_stack) -> None:
    st = clean_stack
    user = st.actor("static-ann")
    session = st.service.wait(user, st.service.launch(user, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    client = opened(st, session.id, user.name)
    try:
        page = client.get("/lab").text
    finally:
        client.close()
    key = labstatic.key_of(st.runtime.image_id(st.settings.notebook_image))
    shared = f"{st.settings.static_origin}/lab/{key}"
    assert f'"fullStaticUrl": "{shared}"' in page
    script = re.search(r'src="([^"]+/main\.[0-9a-f]+\.js)[^"]*"', page)
    assert script is not None and script.group(1).startswith(shared + "/")
    port = int(st.settings.entrypoint_listen.rsplit(":", 1)[1])
    status, headers, _ = _raw_get(port, f"static.nb.localhost:{port}", script.group(1).split(str(port), 1)[1])
    assert status == 200 and headers["cache-control"].endswith("immutable")


_READ_THEN_HANG = """
import sys, time
from launcher.adapters.docker_runtime import DockerRuntime
stream = DockerRuntime().image_archive(sys.argv[1], sys.argv[2], owner=sys.argv[3])
next(stream)
print("reading", flush=True)
time.sleep(120)
"""


def _killed_mid_copy(image: str, final: Path) -> str:
    """What a worker SIGKILLed while copying an image folder leaves: the name of its image-reading container."""
    args = [sys.executable, "-c", _READ_THEN_HANG, image, labstatic.LAB_STATIC, str(final)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "reading"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    left = [name for name, owner in DockerRuntime().archives().items() if owner == str(final)]
    assert len(left) == 1, left
    return left[0]


@pytest.mark.docker
def test_a_copy_killed_midway_leaves_no_container_behind(workdir: Path) -> None:
    """A worker killed while it reads an image folder never runs its clean-up; the container it created to read
    from is labelled with the folder, and the next copy of that folder (under its lock) or reconcile's sweep
    removes it. A sweep skips a folder whose copy is running (its lock is held)."""
    client = docker_or_skip()
    runtime = DockerRuntime()
    base = workdir / f"archives-{random_instance()}"
    base.mkdir(mode=0o755)
    final = base / labstatic.key_of(runtime.image_id(IMAGE))

    left = _killed_mid_copy(IMAGE, final)
    assert client.containers.get(left).status == "created"
    partial = base / f".{final.name}.999999.1.tmp"  # a killed copy's half-extracted folder
    (partial / "static").mkdir(parents=True)
    assert labstatic.copy_once(runtime, IMAGE, labstatic.LAB_STATIC, final, check="index.html") == final
    assert left not in runtime.archives() and (final / "index.html").is_file() and not partial.exists()

    left = _killed_mid_copy(IMAGE, final)
    with open(base / ".lock", "a") as lock:  # a copy into this folder is running: its container is not touched
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert labstatic.sweep_archives(runtime, [base]) == 0 and left in runtime.archives()
    assert labstatic.sweep_archives(runtime, [workdir / "elsewhere", base]) == 1
    assert left not in runtime.archives()
