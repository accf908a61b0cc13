"""Workspace quotas: enforced by the filesystem where the host allows it, measured otherwise.

``filesystem`` (the default where the worker is root and ``mkfs.ext4`` and loop mounts work): each
user's workspace is a sparse ext4 image of the quota's size (``<workspace images>/<user>.img``),
loop-mounted (``nosuid,nodev``) on the workspace folder while a session of theirs runs on this host.
A full workspace is ENOSPC inside the notebook; the host filesystem (and Redis's files on it) never
fills. ``measure``: the usage is measured (bounded in time and entries) when a session starts and by a
periodic task, the console warns, and a launch above the quota is refused.

Every command is an argument list (never a shell), with validated names and paths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from launcher.errors import StartFailed
from launcher.models import WorkspaceUsage
from launcher.settings import Settings
from launcher.validation import safe_child, validate_user_id

GB = 1024**3
MEASURE_MAX_ENTRIES = 1_000_000
MEASURE_MAX_SECONDS = 5.0


_USER_LOCKS: dict[str, threading.Lock] = {}
_USER_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def user_lock(user: str) -> Iterator[None]:
    """One user's workspace mount, in this worker process: a start holds it from attaching the workspace until its
    container (or claimed pool container) holds the workspace, and a release holds it while it checks that nothing
    live uses the workspace and unmounts. Without it a reconcile could unmount a workspace a start just attached."""
    with _USER_LOCKS_GUARD:
        lock = _USER_LOCKS.setdefault(user, threading.Lock())
    with lock:
        yield


def limit_bytes(settings: Settings) -> int:
    return int(settings.workspace_quota_gb * GB)


def filesystem_mode(settings: Settings) -> bool:
    """Whether quotas are enforced by per-user filesystem images on this host."""
    if settings.workspace_quota_gb <= 0 or settings.workspace_quota_enforce == "measure":
        return False
    able = os.geteuid() == 0 and bool(shutil.which("mkfs.ext4")) and bool(shutil.which("mount"))
    if settings.workspace_quota_enforce == "filesystem" and not able:
        raise StartFailed(
            "this Docker host cannot enforce workspace quotas; an operator must fix it",
            "LAUNCHER_WORKSPACE_QUOTA_ENFORCE=filesystem needs root, mkfs.ext4 and loop mounts",
        )
    return able


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise StartFailed(
            "the workspace could not be prepared; an operator must look at the worker's log",
            f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[:300]}",
        )


def image_path(settings: Settings, user: str) -> Path:
    base = settings.workspace_images_dir
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    return safe_child(base.resolve(), f"{validate_user_id(user)}.img")


def attach(settings: Settings, user: str, workspace: Path) -> bool:
    """Mount the user's quota image on their (empty or already mounted) workspace folder.

    Returns False when the workspace is an older plain folder with files in it: it stays as it is
    and is measured instead (an operator can migrate it; docs/operations.md).
    """
    if os.path.ismount(workspace):
        return True
    if any(workspace.iterdir()):
        return False
    image = image_path(settings, user)
    if not image.exists():
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.truncate(fd, limit_bytes(settings))  # sparse: the host pays only for what is written
        finally:
            os.close(fd)
        owner = f"root_owner={settings.notebook_uid}:{settings.notebook_gid}"
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"{owner},lazy_itable_init=1,lazy_journal_init=1", str(image)])
        fresh = True
    else:
        fresh = False
        if image.stat().st_size < limit_bytes(settings):  # the quota was raised: grow the image
            os.truncate(image, limit_bytes(settings))
    _run(["mount", "-o", "loop,nosuid,nodev", str(image), str(workspace)])
    if fresh:
        (workspace / "lost+found").rmdir()
    os.chmod(workspace, 0o700)
    st = os.statvfs(workspace)
    if image.stat().st_size > st.f_blocks * st.f_frsize + 64 * 1024**2:  # grown: grow the filesystem online
        _run(["resize2fs", _loop_device(workspace)])
    return True


def _loop_device(mountpoint: Path) -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, target = line.split()[:2]
        if target == str(mountpoint):
            return device
    raise StartFailed("the workspace is not mounted", f"no mount at {mountpoint}")


def detach(settings: Settings, user: str) -> None:
    """Unmount the user's workspace image once no container uses it (a busy mount is left alone)."""
    try:
        workspace = safe_child(settings.workspaces_dir.resolve(), validate_user_id(user))
    except Exception:  # noqa: BLE001 - nothing of ours to unmount
        return
    if os.path.ismount(workspace):
        subprocess.run(["umount", str(workspace)], capture_output=True, timeout=60)


def measure(settings: Settings, workspace: Path) -> WorkspaceUsage:
    """The workspace's usage: exact from the filesystem when it is a quota image, else a bounded walk."""
    limit = limit_bytes(settings)
    if os.path.ismount(workspace):
        st = os.statvfs(workspace)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        # The usable capacity (the image less the filesystem's own metadata) is the real limit.
        return WorkspaceUsage(used_bytes=used, limit_bytes=st.f_blocks * st.f_frsize, enforced=True)
    used, entries, partial = 0, 0, False
    deadline = time.monotonic() + MEASURE_MAX_SECONDS
    stack = [workspace]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    entries += 1
                    if entries > MEASURE_MAX_ENTRIES or time.monotonic() > deadline:
                        partial = True
                        stack.clear()
                        break
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            continue
    return WorkspaceUsage(used_bytes=used, limit_bytes=limit, enforced=False, partial=partial)


def mounted_users(settings: Settings) -> list[str]:
    """Users whose workspace image is mounted on this host (for reconcile to release stale mounts)."""
    base = str(settings.workspaces_dir.resolve()) + "/"
    users = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(base) and "/" not in target[len(base) :]:
            users.append(target[len(base) :])
    return users
