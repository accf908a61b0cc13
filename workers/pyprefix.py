"""The notebook image's Python packages, served to its containers from a host folder (issue 12, "a faster cold
path").

Where the Docker engine stores images on fuse-overlayfs (this machine; rootless engines), every ``stat`` and
``open`` inside a container goes through a FUSE process. Jupyter's boot imports about 750 modules with some 3,600
``stat`` calls: on this 2-core machine the imports take 1.4-1.6 s from the image's layers and 0.85-1.05 s from a
bind-mounted host folder with the same files (``python3 -c "import jupyter_server.serverapp, jupyterlab.labapp"``,
measured 2026-11-27). A read-only bind of a host folder is the kernel's own filesystem, with no FUSE on the way.

So each worker copies the image's ``dist-packages`` once, in the background, into
``<python_prefix_dir>/<first 16 hex of the image ID>/`` (the image's own files, by the image's ID: the record of
what a session ran on, its image ID, stays true), and containers of that image started afterwards bind it
read-only over the image's own folder. Until the copy is complete, and whenever it failed, containers use the
image's folder: slower, never different. The copy is one tar stream of the image, extracted with the checks of
``workers.labstatic.extract`` into a temporary folder renamed into place; a lock file makes it one copy per
host at a time, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

from launcher.errors import LauncherError
from launcher.logs import event
from launcher.ports import Runtime
from launcher.settings import Settings
from launcher.spec import IMAGE_PACKAGES
from workers import labstatic

log = logging.getLogger("launcher.worker")
TOP = "dist-packages"
DONE = ".complete"  # written last inside the folder before the rename: a folder without it is never used
MAX_BYTES = 4 * 2**30
MAX_ENTRIES = 200_000
_LOCK = threading.Lock()
_COPYING: set[str] = set()


def folder(settings: Settings, key: str) -> Path:
    return settings.python_prefix_dir / key


def ready(settings: Settings, runtime: Runtime, image: str, *, background: bool = True) -> Path | None:
    """The host folder with ``image``'s packages, if it is complete; else None, and (``background``) a copy is
    started in a thread of its own, so no launch ever waits for it."""
    if not settings.python_prefix_bind:
        return None
    try:
        key = labstatic.key_of(labstatic._image_id(runtime, image))
    except (LauncherError, ValueError) as exc:
        event(log, "python_prefix.unavailable", level=logging.WARNING, image=image, error=str(exc)[:200])
        return None
    final = folder(settings, key)
    if (final / DONE).is_file():
        return final
    if background:
        with _LOCK:
            if key in _COPYING:
                return None
            _COPYING.add(key)
        threading.Thread(target=_copy_then_forget, args=(settings, runtime, image, key), daemon=True).start()
    return None


def _copy_then_forget(settings: Settings, runtime: Runtime, image: str, key: str) -> None:
    with contextlib.suppress(OSError):  # this thread only (Linux): launches on this host go first
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    try:
        copy(settings, runtime, image, key)
    finally:
        with _LOCK:
            _COPYING.discard(key)


def copy(settings: Settings, runtime: Runtime, image: str, key: str) -> Path | None:
    """Copy ``image``'s packages into their host folder (once per host: under a lock file); the folder, or None
    if the copy failed (logged)."""
    base = settings.python_prefix_dir
    final = folder(settings, key)
    base.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(base, 0o755)
    with open(base / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker on this host may be copying the same image
        try:
            if (final / DONE).is_file():
                return final
            tmp = base / f".{key}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            t0 = time.monotonic()
            try:
                chunks = runtime.image_archive(image, IMAGE_PACKAGES)
                written = labstatic.extract(chunks, tmp, TOP, max_bytes=MAX_BYTES, max_entries=MAX_ENTRIES)
                (tmp / DONE).write_text(f"{image}\n")
                shutil.rmtree(final, ignore_errors=True)  # an incomplete folder from before (no DONE in it)
                os.replace(tmp, final)
            except (LauncherError, ValueError, OSError, tarfile.TarError) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                event(log, "python_prefix.copy_failed", level=logging.WARNING, image=image, error=str(exc)[:200])
                return None
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)
    event(log, "python_prefix.copied", key=key, bytes=written, seconds=round(time.monotonic() - t0, 1))
    return final

