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
``workers.labstatic.copy_once`` (the JupyterLab assets' copy): a temporary folder renamed into place, one copy
per host at a time under a lock file, whatever the number of workers.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from launcher.errors import LauncherError
from launcher.logs import event
from launcher.ports import Runtime
from launcher.settings import Settings
from launcher.spec import IMAGE_PACKAGES
from workers import labstatic

log = logging.getLogger("launcher.worker")
MAX_BYTES = 4 * 2**30
MAX_ENTRIES = 200_000


def ready(settings: Settings, runtime: Runtime, image: str) -> Path | None:
    """The host folder with ``image``'s packages, if it is there (it exists only complete); else None, and a copy
    is started in a thread of its own, so no launch ever waits for it."""
    if not settings.python_prefix_bind:
        return None
    try:
        key = labstatic.key_of(labstatic.image_id(runtime, image))
    except (LauncherError, ValueError) as exc:
        event(log, "python_prefix.unavailable", level=logging.WARNING, image=image, error=str(exc)[:200])
        return None
    final = settings.python_prefix_dir / key
    if final.is_dir():
        return final
    labstatic.in_background(final, lambda: copy(runtime, image, final) is not None)
    return None


def copy(runtime: Runtime, image: str, final: Path) -> Path | None:
    """Copy ``image``'s packages to ``final`` (``labstatic.copy_once``); ``final``, or None if the copy failed
    (logged)."""
    try:
        return labstatic.copy_once(
            runtime,
            image,
            IMAGE_PACKAGES,
            final,
            check="jupyterlab/__init__.py",
            max_bytes=MAX_BYTES,
            max_entries=MAX_ENTRIES,
        )
    except (LauncherError, ValueError, OSError, tarfile.TarError) as exc:
        event(log, "python_prefix.copy_failed", level=logging.WARNING, image=image, error=str(exc)[:200])
        return None
