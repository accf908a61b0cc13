"""JupyterLab's static assets, served once per image from one shared origin (issue 12, "JupyterLab itself loads
fast").

Every session is its own origin, so a browser would download JupyterLab's 5 MB of assets again for each
session. Instead the worker copies them out of the notebook image once, into
``<lab_static_dir>/<first 16 hex of the image ID>/``, and starts Jupyter with ``LabApp.static_url_prefix``
pointing at ``<static origin>/lab/<that key>/``; the entry point serves that folder on ``static.<notebook
domain>`` (public, immutable, compressed, readable cross-origin). The assets are the image's own files, the same
for every user: nothing secret, no cookie, no authorization. A copy that fails leaves the session on its own
``/static/`` (slower, never broken).

The copy is the image's tar stream of one folder, extracted with checks: regular files and folders only, no
name that leaves the folder, at most ``MAX_BYTES`` and ``MAX_ENTRIES``, into a temporary folder renamed into
place, so a half-copied folder is never served (``copy_once``, which ``workers.pyprefix`` uses too).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from launcher.errors import LauncherError
from launcher.logs import event
from launcher.ports import Runtime
from launcher.settings import Settings

log = logging.getLogger("launcher.worker")
LAB_STATIC = "/usr/local/share/jupyter/lab/static"
MAX_BYTES = 256 * 2**20
MAX_ENTRIES = 5000
_IDS: dict[str, tuple[float, str]] = {}  # image reference -> (when looked up, image ID)
_ID_TTL_S = 30.0
_LOCK = threading.Lock()


def key_of(image_id: str) -> str:
    match = re.fullmatch(r"sha256:([0-9a-f]{64})", image_id)
    if match is None:
        raise ValueError(f"not an image ID: {image_id[:30]!r}")
    return match.group(1)[:16]


def static_url(settings: Settings, key: str) -> str:
    return f"{settings.static_origin}/lab/{key}/"


class _Stream(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (docker-py's archive stream), for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def extract(
    chunks: Iterator[bytes],
    dest: Path,
    top: str = "static",
    *,
    max_bytes: int = MAX_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> int:
    """Extract the tar stream of folder ``top`` into ``dest`` (which must not exist); the bytes written.

    Refuses (``ValueError``) anything but regular files and folders below ``top``, and more than the bounds. Files
    are 0644, or 0755 where the image has an execute bit, with the image's modification time (compiled bytecode
    checks its source's); folders 0755; everything the extracting user's."""
    dest.mkdir(mode=0o755)
    written = entries = 0
    with tarfile.open(fileobj=io.BufferedReader(_Stream(chunks)), mode="r|") as archive:
        for member in archive:
            entries += 1
            if entries > max_entries:
                raise ValueError(f"more than {max_entries} entries")
            parts = member.name.split("/")
            if parts[0] != top or any(p in ("", ".", "..") for p in parts[1:]) or "\0" in member.name:
                raise ValueError(f"unexpected name {member.name[:80]!r}")
            target = dest.joinpath(*parts[1:]) if len(parts) > 1 else dest
            if member.isdir():
                target.mkdir(mode=0o755, exist_ok=True)
                continue
            if not member.isreg():
                raise ValueError(f"not a regular file: {member.name[:80]!r}")
            written += member.size
            if written > max_bytes:
                raise ValueError(f"more than {max_bytes} bytes")
            source = archive.extractfile(member)
            assert source is not None
            mode = 0o755 if member.mode & 0o111 else 0o644
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)
                out.flush()  # before the time is set: a later write would set it to now
                # The image's modification time: Python's cached bytecode is valid only for its source's mtime.
                os.utime(out.fileno(), (member.mtime, member.mtime))
    return written


def image_id(runtime: Runtime, image: str) -> str:
    """The engine's ID of ``image`` (looked up at most every 30 s per reference: this is on every launch)."""
    now = time.monotonic()
    cached = _IDS.get(image)
    if cached is not None and now - cached[0] < _ID_TTL_S:
        return cached[1]
    found = runtime.image_id(image)
    _IDS[image] = (now, found)
    return found


def copy_once(
    runtime: Runtime,
    image: str,
    source: str,
    final: Path,
    *,
    check: str = "",
    max_bytes: int = MAX_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> Path:
    """Copy folder ``source`` of ``image`` to ``final`` unless it is there; ``final``. Shared by the JupyterLab
    assets and the Python packages (``workers.pyprefix``).

    One copy at a time per folder on this host (a lock file beside it, whatever the number of workers); extracted
    into a temporary folder renamed into place, so ``final`` exists only complete. ``check``: a file the copy must
    hold. Raises ``LauncherError``, ``ValueError``, ``OSError`` or ``tarfile.TarError`` when it cannot copy."""
    if final.is_dir():
        return final
    base = final.parent
    base.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(base, 0o755)
    with open(base / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        _remove_leftovers(runtime, base)  # whoever made them holds no lock: stopped or killed mid-copy
        if final.is_dir():  # another worker copied it while this one waited
            return final
        tmp = base / f".{final.name}.{os.getpid()}.{threading.get_native_id()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        try:
            top = PurePosixPath(source).name
            written = extract(
                runtime.image_archive(image, source, owner=str(final)),
                tmp,
                top,
                max_bytes=max_bytes,
                max_entries=max_entries,
            )
            if check and not (tmp / check).is_file():
                raise ValueError(f"no {check} in the image's {source}")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    event(log, "image_folder.copied", folder=str(final), bytes=written, seconds=round(time.monotonic() - t0, 1))
    return final


def sweep_archives(runtime: Runtime, bases: list[Path]) -> int:
    """Remove what copies into ``bases`` left behind (a worker stopped mid-copy never cleans up): image-reading
    containers and partial folders. A base whose lock is held is copying now and is skipped. How many containers
    were removed."""
    removed = 0
    for base in bases:
        if not base.is_dir():
            continue
        with open(base / ".lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            removed += _remove_leftovers(runtime, base)
    return removed


def _remove_leftovers(runtime: Runtime, base: Path) -> int:
    """What a copy into ``base`` stopped midway left (its thread dies with the worker, clean-up unrun): every
    image-reading container whose folder is in ``base``, and every half-extracted temporary folder. The caller holds
    ``base``'s lock, so no copy is running. How many containers were removed."""
    for tmp in base.glob(".*.tmp"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            event(log, "image_folder.partial_removed", folder=str(tmp))
    stale = [name for name, owner in runtime.archives().items() if Path(owner).parent == base]
    for name in stale:
        runtime.stop(name, timeout=0)
        event(log, "image_folder.archive_removed", container=name, folder=str(base))
    return len(stale)


def ensure(settings: Settings, runtime: Runtime, image: str) -> str:
    """The static URL prefix for Jupyter in containers of ``image`` ("" when shared assets are off or could not be
    copied: the session then serves its own)."""
    if not settings.shared_lab_static:
        return ""
    try:
        key = key_of(image_id(runtime, image))
        folder = copy_once(runtime, image, LAB_STATIC, settings.lab_static_dir / key, check="index.html")
    except (LauncherError, ValueError, OSError, tarfile.TarError) as exc:
        event(log, "lab_static.unavailable", level=logging.WARNING, image=image, error=str(exc)[:200])
        return ""
    in_background(folder, lambda: _precompress_logged(folder))
    return static_url(settings, key)


# -- in the background, once per folder --------------------------------------------------------------------------
_STARTED: set[Path] = set()  # a folder whose work runs, or ran and succeeded, in this process


def in_background(folder: Path, work: Callable[[], bool]) -> None:
    """Run ``work`` for ``folder`` in a thread of its own at low priority (launches on this host go first), unless
    it runs or has succeeded in this process; a ``work`` that fails (returns False) is tried again on a later call.
    Shared by the brotli copies here and the Python packages' copy (``workers.pyprefix``)."""
    with _LOCK:
        if folder in _STARTED:
            return
        _STARTED.add(folder)

    def run() -> None:
        with contextlib.suppress(OSError):  # this thread only (Linux)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        done = False
        try:
            done = work()
        finally:
            if not done:
                with _LOCK:
                    _STARTED.discard(folder)

    threading.Thread(target=run, name=f"background-{folder.name}", daemon=True).start()


# -- brotli, precompressed once per image -------------------------------------------------------------------------
# The entry point serves ``<file>.br`` to browsers that accept brotli (nginx's brotli_static, where Debian's module is
# installed; gzip on the fly otherwise). Quality 11 costs about 15 CPU-seconds for JupyterLab's 15 MB of JavaScript,
# once per image and host, in the background, and makes the core bundle 489 KB against 650 KB gzipped.
BROTLI_QUALITY = 11
STALE_TMP_S = 600.0  # a temporary .br older than this was left by a compress killed midway (one file takes < 1 s)
COMPRESSIBLE = {".js", ".mjs", ".css", ".json", ".svg", ".html", ".txt", ".ttf", ".eot"}


def _precompress_logged(folder: Path) -> bool:
    try:
        made = precompress(folder)
    except (OSError, ImportError) as exc:
        event(log, "lab_static.precompress_failed", level=logging.WARNING, folder=str(folder), error=str(exc)[:200])
        return False
    if made:
        event(log, "lab_static.precompressed", folder=str(folder), files=made)
    return True


def precompress(folder: Path) -> int:
    """Write ``<file>.br`` beside every compressible asset of ``folder`` over 1 KB that has none; how many were
    written. Each is written under a temporary name and renamed, so nginx never serves half of one; two workers
    doing the same folder at once write the same bytes. Temporary files a killed compress left are removed first
    (by age: another worker's, still being written, is younger)."""
    import brotli  # the worker's dependency; imported here so that nothing else needs it

    for stale in folder.glob(".*.br.*.tmp"):
        with contextlib.suppress(OSError):  # gone already: another worker removed or renamed it
            if stale.is_file() and time.time() - stale.lstat().st_mtime > STALE_TMP_S:
                stale.unlink()
    made = 0
    for path in sorted(folder.iterdir()):
        if path.suffix not in COMPRESSIBLE or not path.is_file() or path.is_symlink():
            continue
        target = path.with_name(path.name + ".br")
        if target.exists() or path.stat().st_size < 1024:
            continue
        tmp = path.with_name(f".{path.name}.br.{os.getpid()}.{threading.get_native_id()}.tmp")
        try:
            tmp.write_bytes(brotli.compress(path.read_bytes(), quality=BROTLI_QUALITY))
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        made += 1
    return made
