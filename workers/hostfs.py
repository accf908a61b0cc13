"""Folders on the Docker host: each user's workspace and each session's socket folder.

Runs as root on the worker's host. Every name is validated and every path checked to stay inside
its base; files are created with O_EXCL|O_NOFOLLOW so a symlink planted in a workspace cannot
redirect a write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from launcher.errors import InvalidRequest
from launcher.settings import Settings
from launcher.validation import resolve_template, safe_child, validate_user_id


def _ensure_base(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    # Traversable (the proxy must reach sockets below it) but not listable by others.
    os.chmod(base, 0o711)
    return base.resolve()


def _chown(path: Path | int, uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    if isinstance(path, Path):
        os.chown(path, uid, gid)
    else:
        os.fchown(path, uid, gid)


def prepare_workspace(settings: Settings, user: str) -> Path:
    """The user's private read-write folder, created 0700 and owned by the notebook user."""
    base = _ensure_base(settings.workspaces_dir)
    path = safe_child(base, validate_user_id(user))
    if not path.exists():
        path.mkdir(mode=0o700)
        _chown(path, settings.notebook_uid, settings.notebook_gid)
    elif not path.is_dir():
        raise InvalidRequest(f"workspace of {user!r} is not a folder; an operator must fix it")
    return path


def copy_template(settings: Settings, template: str, workspace: Path) -> Path:
    """Copy the template into the workspace unless the user already has a copy (theirs wins)."""
    src = resolve_template(settings.templates_dir, template)
    dest = workspace / src.name
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return dest
    try:
        _chown(fd, settings.notebook_uid, settings.notebook_gid)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def session_rundir(settings: Settings, session_id: str) -> Path:
    return settings.sessions_dir.resolve() / session_id


def prepare_rundir(settings: Settings, session_id: str) -> Path:
    """The folder holding the session's Jupyter socket.

    Owned by the notebook user, group = the proxy's group, setgid (mode 2770): the socket Jupyter
    creates inherits the group, so only the entry point (and root) can connect to it.
    """
    base = _ensure_base(settings.sessions_dir)
    path = safe_child(base, session_id)
    path.mkdir(mode=0o770, exist_ok=True)
    _chown(path, settings.notebook_uid, settings.proxy_gid)
    os.chmod(path, 0o2770)
    return path


def remove_rundir(settings: Settings, session_id: str) -> None:
    shutil.rmtree(session_rundir(settings, session_id), ignore_errors=True)
