"""A user's workspace files as the console offers them: a bounded listing, one file, or the whole folder as a zip.

The workspace lives on the Docker host of the user's sessions (``settings.workspaces_dir/<user>``, a mounted
quota image while a session runs). The console reads it only when that folder is local to the console
process; otherwise it says so. Nothing here follows a symlink: every path is opened component by component
from the workspace's own descriptor with ``O_NOFOLLOW``, so a link a notebook made (to /etc, to another
user's folder) is neither listed as a file nor read.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from launcher.errors import InvalidRequest, LimitReached, NotFound
from launcher.settings import Settings
from launcher.validation import safe_child, validate_user_id

MAX_ENTRIES = 500  # listed (and archived) at most
MAX_DEPTH = 8
MAX_FILE_BYTES = 200 * 2**20  # one download
MAX_ARCHIVE_BYTES = 500 * 2**20  # the whole workspace as a zip (before compression)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the workspace, with "/"
    size: int
    modified: datetime


def workspace_root(settings: Settings, user: str) -> Path | None:
    """The user's workspace folder when it is on this machine (where the console runs), else None."""
    base = settings.workspaces_dir
    if not base.is_dir():
        return None
    try:
        root = safe_child(base, validate_user_id(user))
    except InvalidRequest:
        return None
    return root if root.is_dir() else None


def _parts(relative: str) -> list[str]:
    parts = relative.split("/")
    if not relative or len(parts) > MAX_DEPTH + 1 or any(p in {"", ".", ".."} or "\0" in p for p in parts):
        raise InvalidRequest("invalid file name")
    return parts


def _walk(fd: int, prefix: str, depth: int) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files below the directory ``fd`` (never through a symlink), sorted, depth-first."""
    with os.scandir(fd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield prefix + name, st
        elif stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
            try:
                child = os.open(name, _DIR, dir_fd=fd)
            except OSError:
                continue
            try:
                yield from _walk(child, f"{prefix}{name}/", depth + 1)
            finally:
                os.close(child)


def list_files(root: Path) -> tuple[list[Entry], bool]:
    """At most ``MAX_ENTRIES`` regular files of the workspace, and whether there were more."""
    fd = os.open(root, _DIR)
    entries: list[Entry] = []
    try:
        for path, st in _walk(fd, "", 0):
            if len(entries) >= MAX_ENTRIES:
                return entries, True
            entries.append(Entry(path, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
    finally:
        os.close(fd)
    return entries, False


def open_file(root: Path, relative: str) -> tuple[IO[bytes], int]:
    """One regular file of the workspace, opened without following any symlink, and its size."""
    parts = _parts(relative)
    fd = os.open(root, _DIR)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError:
                raise NotFound("no such file in your workspace") from None
            os.close(fd)
            fd = nxt
        try:
            file_fd = os.open(parts[-1], _FILE, dir_fd=fd)
        except OSError:
            raise NotFound("no such file in your workspace") from None
    finally:
        os.close(fd)
    st = os.fstat(file_fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(file_fd)
        raise NotFound("no such file in your workspace")
    if st.st_size > MAX_FILE_BYTES:
        os.close(file_fd)
        raise LimitReached(f"the file is larger than {MAX_FILE_BYTES // 2**20} MB: download it from JupyterLab")
    os.set_blocking(file_fd, True)
    return os.fdopen(file_fd, "rb"), st.st_size


def archive(root: Path) -> IO[bytes]:
    """The workspace as a zip in a temporary file (bounded in entries and bytes), positioned at its start."""
    entries, _ = list_files(root)
    if sum(e.size for e in entries) > MAX_ARCHIVE_BYTES:
        raise LimitReached(
            f"your workspace holds more than {MAX_ARCHIVE_BYTES // 2**20} MB: download single files instead"
        )
    out = tempfile.TemporaryFile()  # noqa: SIM115 - returned open, at its start; the caller closes it
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            try:
                handle, _size = open_file(root, entry.path)
            except (NotFound, LimitReached):
                continue  # removed or grown meanwhile
            with handle, zf.open(entry.path, "w", force_zip64=True) as dest:
                copied = 0
                while chunk := handle.read(1 << 20):
                    copied += len(chunk)
                    if copied > MAX_FILE_BYTES:
                        break
                    dest.write(chunk)
    out.seek(0)
    return out
