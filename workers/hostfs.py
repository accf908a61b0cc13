"""Folders on the Docker host: each user's workspace and each session's socket folder.

Runs as root on the worker's host. Every name is validated and every path checked to stay inside
its base; files are created with O_EXCL|O_NOFOLLOW so a symlink planted in a workspace cannot
redirect a write.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import stat
from pathlib import Path

from launcher.errors import InvalidRequest, StartFailed
from launcher.models import SESSION_ID_PATTERN
from launcher.settings import Settings
from launcher.validation import resolve_template, safe_child, validate_user_id


def _ensure_base(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    # Traversable (the proxy must reach sockets below it) but not listable by others.
    os.chmod(base, 0o711)
    return base.resolve()


def own(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` to ``uid:gid`` (when this process may: as root)."""
    _chown(path, uid, gid)


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
    return _copy_new(settings, src, workspace / src.name)


def _copy_new(settings: Settings, src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` owned by the notebook uid, unless ``dest`` exists (never through a symlink)."""
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


def keep_template(settings: Settings, template: str, sha256: str) -> None:
    """Keep this version of a template in the template store (``<sha256>.ipynb``, read-only) if it is not there:
    a later "relaunch exactly" copies this version, whatever the templates folder holds by then."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise StartFailed("the notebook could not be prepared", f"invalid template hash {sha256[:16]!r}")
    store = settings.template_store_dir
    store.mkdir(parents=True, exist_ok=True, mode=0o755)
    dest = store / f"{sha256}.ipynb"
    if dest.exists():
        return
    tmp = store / f".{sha256}.tmp"
    shutil.copyfile(resolve_template(settings.templates_dir, template), tmp, follow_symlinks=False)
    tmp.chmod(0o444)
    os.replace(tmp, dest)


def copy_pinned_template(settings: Settings, template: str, sha256: str, workspace: Path) -> Path:
    """Copy a kept template version into the workspace as ``<template>@<first 12 hex>.ipynb`` (the user's own
    ``<template>.ipynb`` stays as it is); refused clearly when that version is no longer kept."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise StartFailed("the notebook could not be prepared", f"invalid template hash {sha256[:16]!r}")
    src = settings.template_store_dir / f"{sha256}.ipynb"
    if src.is_symlink() or not src.is_file():
        raise StartFailed(
            f"the template version this relaunch asks for ({template} {sha256[:12]}) is no longer kept",
            f"{src} missing",
        )
    return _copy_new(settings, src, workspace / f"{template}@{sha256[:12]}.ipynb")


RECORD_DIR = ".launcher"  # in the workspace: ~/work/.launcher/<session id>.json
RECORD_MAX_BYTES = 64 * 1024


def write_record(settings: Settings, workspace: Path, session_id: str, text: str) -> Path:
    """Write a session's record into the user's workspace as ``.launcher/<session id>.json``, owned by the
    notebook uid. Never through a symlink: the folder is opened with O_NOFOLLOW|O_DIRECTORY and the file is
    written under a fresh name in it (O_EXCL) and renamed over the old one, relative to that folder."""
    if not re.fullmatch(SESSION_ID_PATTERN, session_id):
        raise InvalidRequest(f"invalid session id {session_id[:20]!r}")
    name = f"{session_id}.json"
    data = text.encode()
    if len(data) > RECORD_MAX_BYTES:
        raise InvalidRequest(f"the record of {session_id} is larger than {RECORD_MAX_BYTES} bytes")
    folder = workspace / RECORD_DIR
    try:
        folder.mkdir(mode=0o755)
    except FileExistsError:
        pass
    else:
        _chown(folder, settings.notebook_uid, settings.notebook_gid)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        tmp = f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        try:
            _chown(fd, settings.notebook_uid, settings.notebook_gid)
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)
    return folder / name


def session_rundir(settings: Settings, session_id: str) -> Path:
    return settings.sessions_dir.resolve() / session_id


SOCKET_NAME = "jupyter.sock"


def prepare_rundir(settings: Settings, session_id: str, secret: str) -> Path:
    """The session's host folder, reachable only by root and the entry point's group::

        <sessions>/<sid>/            root:proxy 0750   (host accounts, the notebook uid included, stop here)
            sock/                    uid:proxy 2770    mounted at /run/nb; locked to root once Jupyter answers
            secret/auth              root:gid  0440    mounted read-only at /run/nbl: what the entry point adds;
                                               deleted once Jupyter has read it (``retire_secret``)
            secret.root              root      0400    the copy reconcile reads back; never mounted

    Safe to repeat for a retried start: the folders are fixed up and the secret rewritten.
    """
    base = _ensure_base(settings.sessions_dir)
    path = safe_child(base, session_id)
    path.mkdir(mode=0o750, exist_ok=True)
    _own(path, 0, settings.proxy_gid, 0o750)
    sock = path / "sock"
    existed = sock.is_dir() and not sock.is_symlink()
    sock.mkdir(mode=0o770, exist_ok=True)
    if not existed or os.lstat(sock).st_uid != 0:  # never unlock a socket folder once locked
        _own(sock, settings.notebook_uid, settings.proxy_gid, 0o2770)
    secret_dir = path / "secret"
    secret_dir.mkdir(mode=0o750, exist_ok=True)
    _own(secret_dir, 0, settings.notebook_gid, 0o750)
    tmp = secret_dir / ".auth.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o440)
    try:
        _chown(fd, 0, settings.notebook_gid)
        os.write(fd, secret.encode())
    finally:
        os.close(fd)
    os.replace(tmp, secret_dir / "auth")
    _write_private(path / "secret.root", secret)
    return path


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def retire_secret(settings: Settings, session_id: str) -> None:
    """Once Jupyter answers it holds the secret in memory: remove the copy its kernels could read."""
    (session_rundir(settings, session_id) / "secret" / "auth").unlink(missing_ok=True)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    if path.is_symlink():
        raise InvalidRequest(f"{path} is a symlink; an operator must remove it")
    _chown(path, uid, gid)
    os.chmod(path, mode)


def read_secret(settings: Settings, session_id: str) -> str:
    """The secret a session's entry point adds (how reconcile recovers a session Redis lost)."""
    path = session_rundir(settings, session_id) / "secret.root"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        return f.read(256).decode(errors="replace").strip()


def socket_path(settings: Settings, session_id: str) -> Path:
    return session_rundir(settings, session_id) / "sock" / SOCKET_NAME


def lock_socket(settings: Settings, session_id: str) -> Path:
    """Once Jupyter answers: make the socket folder root's, so the notebook can no longer replace,
    remove or redirect its socket (nginx and the worker trust whatever sits at that path).

    Refuses anything at the path that is not the socket the notebook's own uid created, or a folder
    holding anything else. Idempotent (a locked folder is checked again and left as it is).
    """
    sock_dir = session_rundir(settings, session_id) / "sock"
    path = sock_dir / SOCKET_NAME
    locked = os.lstat(sock_dir).st_uid == 0
    st = os.lstat(path)
    owner = 0 if locked else settings.notebook_uid
    if not stat.S_ISSOCK(st.st_mode) or (os.geteuid() == 0 and st.st_uid != owner):
        raise StartFailed(
            "the notebook server's socket is not what the launcher created; the session was stopped",
            f"refusing {path}: mode {oct(st.st_mode)} uid {st.st_uid}",
        )
    extra = sorted(set(os.listdir(sock_dir)) - {SOCKET_NAME})
    if extra:
        raise StartFailed(
            "the notebook server's socket folder holds unexpected files; the session was stopped",
            f"refusing {sock_dir}: unexpected entries {extra[:5]!r}",
        )
    if not locked and os.geteuid() == 0:
        os.chown(sock_dir, 0, settings.proxy_gid)
        os.chmod(sock_dir, 0o750)
        os.chown(path, 0, settings.proxy_gid, follow_symlinks=False)
        os.chmod(path, 0o660)
    return path


def checked_socket(settings: Settings, session_id: str) -> Path:
    """The session's socket path, if it is still the locked socket (never a symlink or a file)."""
    path = socket_path(settings, session_id)
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or (os.geteuid() == 0 and st.st_uid != 0):
        raise OSError(f"{path} is not the session's locked socket")
    return path


def remove_rundir(settings: Settings, session_id: str) -> None:
    shutil.rmtree(session_rundir(settings, session_id), ignore_errors=True)


# -- the notebook identity -------------------------------------------------------------------

_NO_LOGIN_SHELLS = frozenset({"", "/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sync"})


def login_account_conflict(uid: int, gid: int, accounts: list[pwd.struct_passwd]) -> str | None:
    """Why ``uid``/``gid`` may not run notebooks on a host with these accounts, or None.

    A notebook's processes run as this uid on the host kernel: a login account with the same uid
    could read their memory, environment and files. So the uid must be no account that can log in,
    and the gid no such account's primary group.
    """
    for account in accounts:
        can_log_in = account.pw_shell not in _NO_LOGIN_SHELLS
        if account.pw_uid == uid and (can_log_in or uid == 0):
            return f"uid {uid} is the host account {account.pw_name!r}"
        if account.pw_gid == gid and can_log_in:
            return f"gid {gid} is the primary group of the host account {account.pw_name!r}"
    return None


def check_notebook_identity(settings: Settings) -> None:
    """Refuse to start notebooks as a host login account (``LAUNCHER_NOTEBOOK_UID``/``_GID``)."""
    why = login_account_conflict(settings.notebook_uid, settings.notebook_gid, pwd.getpwall())
    if why:
        raise StartFailed(
            "this Docker host is misconfigured (notebook uid); an operator must fix it",
            f"{why}: set LAUNCHER_NOTEBOOK_UID and LAUNCHER_NOTEBOOK_GID to ids no login account uses",
        )


# -- the warm pool (workers/pool.py) ------------------------------------------------------------


def write_identity(settings: Settings, slot: str, identity: dict[str, str]) -> None:
    """A claimed pool container's session identity, in its read-only ``/run/nbl`` (root:gid 0440): every Python
    process it starts afterwards reads it (docker/notebook/nbl_pool_env.py)."""
    secret_dir = safe_child(_ensure_base(settings.sessions_dir), slot) / "secret"
    if secret_dir.is_symlink() or not secret_dir.is_dir():
        raise StartFailed("the notebook could not be prepared", f"{secret_dir} is not the slot's secret folder")
    tmp = secret_dir / ".identity.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o440)
    try:
        _chown(fd, 0, settings.notebook_gid)
        os.write(fd, json.dumps(identity).encode())
    finally:
        os.close(fd)
    os.replace(tmp, secret_dir / "identity.json")


def rename_rundir(settings: Settings, old: str, new: str) -> None:
    """A claimed pool container's folder takes its session's id (the entry point routes by it). The container's
    bind mounts follow the folder: they hold it, not its name."""
    base = _ensure_base(settings.sessions_dir)
    source, target = safe_child(base, old), safe_child(base, new)
    if target.exists() or target.is_symlink():
        raise StartFailed("the notebook could not be prepared", f"{target} exists already")
    os.rename(source, target)
