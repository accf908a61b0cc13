"""The warm pool's mounts: the one place the launcher binds a user's workspace into a running container.

A pool container boots with its workspace path bound, with ``rslave`` propagation, to an empty *slot* folder
``<pool_slots_dir>/<slot>``. A claim binds the user's workspace onto that slot on the host; the mount propagates
into the running container. The interface is narrow and validated, and uses mount(2) and umount2(2) directly
(never a shell):

    prepare_root(settings)        once: the slots folder is a shared mount point (Docker refuses rslave otherwise)
    make_slot(settings, slot)     an empty slot folder (mode 0755, root's)
    bind(settings, slot, path)    the workspace (a folder of the workspaces root, no symlink) onto the slot
    unbind(settings, slot)        unmount the slot and remove the empty folder (rmdir only: never a recursive
                                  delete, which across a mount point would delete the user's files)
    mounted_slots(settings)       slots with something mounted on them (for reconcile)

Slot ids are ``p`` and 11 lowercase letters or digits. Every path is resolved under its fixed root and refused if
it is a symlink or escapes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
from pathlib import Path

from launcher.errors import InvalidRequest, RuntimeUnavailable
from launcher.settings import Settings

SLOT_RE = re.compile(r"^p[a-z0-9]{11}$")
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _root(settings: Settings) -> Path:
    return settings.pool_slots_dir.resolve()


def slot_path(settings: Settings, slot: str) -> Path:
    if not isinstance(slot, str) or not SLOT_RE.fullmatch(slot):
        raise InvalidRequest(f"invalid pool slot {str(slot)[:20]!r}")
    return _root(settings) / slot


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, optional fields) of this mount namespace."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        out.append((fields[4].replace("\\040", " "), " ".join(fields[6:sep])))
    return out


def prepare_root(settings: Settings) -> None:
    """Make the slots folder a mount point with shared propagation (once per boot; a second call changes nothing)."""
    root = settings.pool_slots_dir
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    root = root.resolve()
    mounts = dict(_mountinfo())
    if str(root) not in mounts:
        _mount(str(root), str(root), MS_BIND)
        mounts = dict(_mountinfo())
    shared = "shared:" in mounts.get(str(root), "")
    if not shared and _libc.mount(None, str(root).encode(), None, MS_REC | MS_SHARED, None) != 0:
        why = f"make-rshared: {os.strerror(ctypes.get_errno())}"
        raise RuntimeUnavailable("the warm pool's folder could not be prepared", why)


def make_slot(settings: Settings, slot: str) -> Path:
    path = slot_path(settings, slot)
    path.mkdir(mode=0o755, exist_ok=True)
    if path.is_symlink() or path.resolve() != path:
        raise InvalidRequest(f"pool slot {slot} is not a plain folder")
    return path


def bind(settings: Settings, slot: str, workspace: Path) -> None:
    """Bind ``workspace`` (a folder directly under the workspaces root) onto the slot."""
    ws_root = settings.workspaces_dir.resolve()
    if workspace.is_symlink() or workspace.resolve().parent != ws_root or not workspace.is_dir():
        raise InvalidRequest(f"workspace {workspace} is not a folder of {ws_root}")
    target = slot_path(settings, slot)
    if not target.is_dir() or target.is_symlink():
        raise InvalidRequest(f"pool slot {slot} does not exist")
    if is_mounted(settings, slot):
        raise InvalidRequest(f"pool slot {slot} is already in use")
    _mount(str(workspace.resolve()), str(target), MS_BIND)


def is_mounted(settings: Settings, slot: str) -> bool:
    target = str(slot_path(settings, slot))
    return any(point == target for point, _ in _mountinfo())


def unbind(settings: Settings, slot: str) -> None:
    """Unmount the slot (all layers) and remove its empty folder. A busy mount (its container still runs) raises:
    destroy the container first. Never removes anything but the empty slot folder."""
    target = slot_path(settings, slot)
    while is_mounted(settings, slot):
        if _libc.umount2(str(target).encode(), 0) != 0:
            why = f"umount {target}: {os.strerror(ctypes.get_errno())}"
            raise RuntimeUnavailable("a notebook's workspace could not be released yet; it is retried", why)
    try:
        target.rmdir()  # empty, or it stays: rmdir never deletes files
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY):
            raise


def mounted_slots(settings: Settings) -> list[str]:
    prefix = str(_root(settings)) + "/"
    slots = []
    for point, _ in _mountinfo():
        if point.startswith(prefix) and SLOT_RE.fullmatch(point[len(prefix) :]):
            slots.append(point[len(prefix) :])
    return sorted(set(slots))


def existing_slots(settings: Settings) -> list[str]:
    root = _root(settings)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if SLOT_RE.fullmatch(p.name))


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise RuntimeUnavailable("a notebook's workspace could not be attached", f"mount {target}: {os.strerror(err)}")
