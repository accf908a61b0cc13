"""The record: what a session runs on, written by its worker at start (issue 13, "the record").

:func:`build_record` is pure (the worker gathers the facts: the image it inspected, the snapshot it resolved,
the hashes below); the record is a flat ``dict[str, str]`` kept on the session (``Session.record``), in the
audit entry of ``RecordProvenance`` (compact JSON) and in the workspace at ``~/work/.launcher/<session>.json``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

RECORD_VERSION = "1"
LOCK_LABEL = "nbl.lock_sha256"
INPUTS_LABEL = "nbl.inputs_sha256"
MAX_HASHED_BYTES = 256 * 2**20  # a template or library file larger than this is not one

# Every key a record has, in the order people read them.
RECORD_FIELDS = (
    "record_version",
    "session",
    "user",
    "recorded_at",
    "image",
    "image_id",
    "lock_sha256",
    "inputs_sha256",
    "snapshot",
    "template",
    "template_sha256",
    "library_version",
    "profile",
    "cpus",
    "mem_bytes",
    "pids_limit",
)


def sha256_file(path: Path, limit: int = MAX_HASHED_BYTES) -> str:
    """The sha256 of a regular file, never through a symlink (raises ``OSError``), at most ``limit`` bytes."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        read = 0
        while chunk := f.read(1 << 20):
            read += len(chunk)
            if read > limit:
                raise OSError(f"{path} is larger than {limit} bytes")
            h.update(chunk)
    return h.hexdigest()


def library_version(library_dir: Path) -> str:
    """The research library's version: ``research.__version__`` when it declares one (``v<version>``), else the
    first 16 hex of the sha256 over its source files (sorted relative paths and contents; caches left out)."""
    package = library_dir / "research"
    init = package / "__init__.py"
    if init.is_file():
        for line in init.read_text(errors="replace").splitlines():
            if line.startswith("__version__") and "=" in line:
                return "v" + line.split("=", 1)[1].strip().strip("\"'")
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(library_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            h.update(path.relative_to(library_dir).as_posix().encode() + b"\0")
            h.update(sha256_file(path).encode() + b"\n")
    return "sha256:" + h.hexdigest()[:16]


class Recorded(Protocol):
    """What a record reads from what it describes: a session, or a report run (``launcher.reports``)."""

    @property
    def id(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def profile(self) -> str: ...
    @property
    def cpus(self) -> float: ...
    @property
    def mem_bytes(self) -> int: ...
    @property
    def pids_limit(self) -> int: ...


def build_record(
    session: Recorded,
    *,
    image: str,
    image_id: str,
    image_labels: dict[str, str],
    snapshot: str,
    template_sha256: str,
    library: str,
    recorded_at: str,
) -> dict[str, str]:
    """The record of ``session`` from the facts its worker gathered ("" where a fact is unknown)."""
    return {
        "record_version": RECORD_VERSION,
        "session": session.id,
        "user": session.user,
        "recorded_at": recorded_at,
        "image": image,
        "image_id": image_id,
        "lock_sha256": image_labels.get(LOCK_LABEL, ""),
        "inputs_sha256": image_labels.get(INPUTS_LABEL, ""),
        "snapshot": snapshot,
        "template": session.template,
        "template_sha256": template_sha256,
        "library_version": library,
        "profile": session.profile,
        "cpus": f"{session.cpus:g}",
        "mem_bytes": str(session.mem_bytes),
        "pids_limit": str(session.pids_limit),
    }
