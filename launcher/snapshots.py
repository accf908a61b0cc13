"""Research data as immutable snapshots: what a session's ``/data`` is, named by the hash of its content.

The data root (``LAUNCHER_DATA_DIR``) is laid out as::

    <root>/snapshots/<id>/MANIFEST.json   the snapshot's manifest: every file's path, size and sha256
    <root>/snapshots/<id>/data/           the files, read-only; mounted read-only at /data
    <root>/current -> snapshots/<id>      the snapshot a launch gets when it pins none

``<id>`` is the first 16 hex digits of the sha256 of the canonical manifest (sorted relative paths, sizes
and sha256 of each file), so the same files always make the same id, and an id names exactly one content.

A data root without ``snapshots/`` is the layout from before snapshots: the root itself is the data, served
as one snapshot called ``legacy`` (nothing to migrate; ``import`` a folder to move on).

Pure parts (unit-tested, tests/test_snapshots.py): :func:`manifest_files`, :func:`snapshot_id`,
:func:`validate_id`, :func:`plan_prune`. Small file-system parts: :func:`create_snapshot`,
:func:`set_current`, :func:`read_current`, :func:`list_snapshots`, :func:`resolve`, :func:`remove_snapshot`.
The command: ``python -m launcher.snapshots import <folder> [--link] [--no-current]`` / ``list`` /
``current [ID]`` / ``prune [--dry-run]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError

LEGACY = "legacy"
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
SNAPSHOTS = "snapshots"
CURRENT = "current"
MANIFEST = "MANIFEST.json"
DATA = "data"
FORMAT = 1
MAX_MANIFEST_BYTES = 64 * 2**20
_CHUNK = 1 << 20


class SnapshotError(LauncherError):
    """A snapshot that does not exist, a malformed id or pointer, or a data root that is not laid out as expected."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, "/"-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    created_at: datetime
    files: int
    total_bytes: int
    source: str


# -- pure ----------------------------------------------------------------------------------------------------


def canonical(files: Iterable[FileEntry]) -> bytes:
    """The bytes the id hashes: the files sorted by path, as compact JSON."""
    rows = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in sorted(files, key=lambda f: f.path)]
    return json.dumps({"files": rows}, sort_keys=True, separators=(",", ":")).encode()


def snapshot_id(files: Iterable[FileEntry]) -> str:
    """The first 16 hex digits of the sha256 of the canonical manifest."""
    return hashlib.sha256(canonical(files)).hexdigest()[:16]


def validate_id(value: str) -> str:
    """A snapshot id (16 lowercase hex digits) or raise: never a path, never a name with a slash or dots."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise SnapshotError("that is not a data snapshot id", f"invalid snapshot id {str(value)[:40]!r}")
    return value


def manifest_document(files: Sequence[FileEntry], *, source: str, created_at: datetime) -> dict[str, Any]:
    """What ``<id>/MANIFEST.json`` holds: the id, the files (sorted), their total and where they came from."""
    ordered = sorted(files, key=lambda f: f.path)
    return {
        "format": FORMAT,
        "id": snapshot_id(ordered),
        "created_at": created_at.astimezone(UTC).isoformat(),
        "source": source,
        "total_bytes": sum(f.size for f in ordered),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in ordered],
    }


def plan_prune(
    snapshots: Iterable[SnapshotInfo], *, current: str | None, referenced: Collection[str], keep_recent: int
) -> list[tuple[SnapshotInfo, bool, str]]:
    """For each snapshot (newest first): (snapshot, remove?, why). Kept: ``current``, those in ``referenced``
    (sessions' records name them), and the ``keep_recent`` most recently created; the rest are removed."""
    newest_first = sorted(snapshots, key=lambda s: (s.created_at, s.id), reverse=True)
    recent = {s.id for s in newest_first[: max(0, keep_recent)]}
    out = []
    for s in newest_first:
        if s.id == current:
            out.append((s, False, "current"))
        elif s.id in referenced:
            out.append((s, False, "referenced by a session record"))
        elif s.id in recent:
            out.append((s, False, f"among the {keep_recent} most recent"))
        else:
            out.append((s, True, "unreferenced and older"))
    return out


# -- the file system -------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(folder: Path) -> list[Path]:
    """Every regular file below ``folder`` (sorted); a symlink, device or socket is refused, never followed."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                raise SnapshotError("the data folder holds a symbolic link", f"refusing symlink {here / name}")
        dirnames.sort()
        for name in sorted(filenames):
            st = os.lstat(here / name)
            if not stat.S_ISREG(st.st_mode):
                raise SnapshotError("the data folder holds something that is not a file", f"refusing {here / name}")
            found.append(here / name)
    return found


def manifest_files(folder: Path) -> list[FileEntry]:
    """The manifest entries of every file below ``folder``: relative path, size, sha256 (sorted by path)."""
    return sorted(
        (FileEntry(p.relative_to(folder).as_posix(), os.lstat(p).st_size, _sha256_file(p)) for p in _walk(folder)),
        key=lambda f: f.path,
    )


def is_legacy(root: Path) -> bool:
    """Whether the data root predates snapshots (no ``snapshots/`` folder): the root itself is the data."""
    return not (root / SNAPSHOTS).is_dir()


def snapshot_dir(root: Path, snap: str) -> Path:
    return root / SNAPSHOTS / validate_id(snap)


def _make_read_only(top: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(top, topdown=False, followlinks=False):
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o444, follow_symlinks=False)
        os.chmod(dirpath, 0o555)


def _make_writable(top: Path) -> None:
    for dirpath, _dirnames, _filenames in os.walk(top, followlinks=False):
        os.chmod(dirpath, 0o755)


def create_snapshot(
    root: Path, source: Path, *, link: bool = False, now: datetime | None = None, label: str = ""
) -> tuple[str, bool]:
    """Import ``source`` (a folder) as a snapshot under ``root``: (its id, whether it was new).

    The files are copied (or hard-linked with ``link``: no extra space, but the source must then never be
    rewritten in place) into a staging folder, hashed there (the manifest describes what is served, not what
    the source held), made read-only, and renamed into place. Importing the same content again is a no-op."""
    source = source.resolve()
    if not source.is_dir():
        raise SnapshotError(f"{source} is not a folder")
    base = root / SNAPSHOTS
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    if source == root.resolve() or base.resolve().is_relative_to(source):
        raise SnapshotError("import a folder outside the data root's snapshots")
    staging = base / f".incoming-{secrets.token_hex(6)}"
    data = staging / DATA
    try:
        data.mkdir(parents=True)
        for src in _walk(source):
            dest = data / src.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if link:
                os.link(src, dest, follow_symlinks=False)
            else:
                shutil.copyfile(src, dest, follow_symlinks=False)
        if os.geteuid() == 0:  # the files are root's: no account may make them writable again
            for dirpath, _dirs, names in os.walk(staging, followlinks=False):
                os.chown(dirpath, 0, 0, follow_symlinks=False)
                for name in names:
                    os.chown(Path(dirpath) / name, 0, 0, follow_symlinks=False)
        files = manifest_files(data)
        doc = manifest_document(files, source=label or str(source), created_at=now or datetime.now(UTC))
        (staging / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")
        snap = doc["id"]
        target = base / snap
        if target.exists():
            return snap, False
        _make_read_only(staging)
        os.rename(staging, target)
        return snap, True
    finally:
        if staging.exists():
            _make_writable(staging)
            shutil.rmtree(staging, ignore_errors=True)


def read_manifest(root: Path, snap: str) -> dict[str, Any]:
    path = snapshot_dir(root, snap) / MANIFEST
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        doc = json.loads(f.read(MAX_MANIFEST_BYTES))
    if not isinstance(doc, dict):
        raise SnapshotError(f"snapshot {snap}'s manifest is not an object")
    return doc


def read_current(root: Path) -> str | None:
    """The id ``<root>/current`` names, ``None`` when there is no pointer. Anything but a symlink to
    ``snapshots/<id>`` is refused."""
    path = root / CURRENT
    try:
        target = os.readlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError("the data root's current pointer is not a symbolic link", f"{path}: {exc}") from None
    prefix, _, snap = target.partition("/")
    if prefix != SNAPSHOTS or not ID_PATTERN.fullmatch(snap):
        raise SnapshotError("the data root's current pointer is malformed", f"{path} -> {target[:100]!r}")
    return snap


def set_current(root: Path, snap: str) -> None:
    """Point ``<root>/current`` at an existing snapshot, atomically (a relative symlink, replaced by rename)."""
    check_snapshot(root, snap)
    tmp = root / f".current-{secrets.token_hex(6)}"
    os.symlink(f"{SNAPSHOTS}/{snap}", tmp)
    try:
        os.replace(tmp, root / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_snapshot(root: Path, snap: str) -> Path:
    """The data folder of snapshot ``snap`` under ``root``: a real folder (no symlink on the way below the
    root) holding a manifest, or raise."""
    folder = snapshot_dir(root, snap)
    for path, want in ((root / SNAPSHOTS, "dir"), (folder, "dir"), (folder / DATA, "dir"), (folder / MANIFEST, "file")):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise SnapshotError(f"there is no data snapshot {snap}", f"missing {path}") from None
        ok = stat.S_ISDIR(st.st_mode) if want == "dir" else stat.S_ISREG(st.st_mode)
        if not ok:
            raise SnapshotError(f"data snapshot {snap} is damaged; an operator must fix it", f"{path} is not a {want}")
    return folder / DATA


def resolve(root: Path, requested: str) -> tuple[str, Path]:
    """What a session pinned to ``requested`` ("" for the current one) mounts at /data: (snapshot id, host folder).

    A legacy root (no ``snapshots/``) serves itself as ``legacy``; a root with snapshots never serves itself."""
    root = root.resolve()
    if is_legacy(root):
        if requested not in ("", LEGACY):
            validate_id(requested)
            raise SnapshotError(f"there is no data snapshot {requested}", f"{root} has no {SNAPSHOTS}/ folder")
        return LEGACY, root
    if requested == LEGACY:
        raise SnapshotError("the legacy data is no longer served: pick a snapshot", f"{root} has snapshots")
    snap = requested or read_current(root)
    if snap is None:
        raise SnapshotError("no current data snapshot is set; an operator must set one", f"{root}/{CURRENT} missing")
    return snap, check_snapshot(root, snap)


def _parse_time(value: Any, fallback: float) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp(fallback, UTC)


def list_snapshots(root: Path) -> list[SnapshotInfo]:
    """The snapshots under ``root`` (newest first); folders that are not snapshots are left out."""
    base = root / SNAPSHOTS
    if not base.is_dir():
        return []
    out = []
    for entry in os.scandir(base):
        if not ID_PATTERN.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            doc = read_manifest(root, entry.name)
        except (OSError, ValueError, SnapshotError):
            continue
        files = doc.get("files") if isinstance(doc.get("files"), list) else []
        out.append(
            SnapshotInfo(
                id=entry.name,
                created_at=_parse_time(doc.get("created_at"), entry.stat(follow_symlinks=False).st_mtime),
                files=len(files or []),
                total_bytes=int(doc.get("total_bytes", 0) or 0),
                source=str(doc.get("source", "")),
            )
        )
    return sorted(out, key=lambda s: (s.created_at, s.id), reverse=True)


def verify_snapshot(root: Path, snap: str) -> list[str]:
    """What differs between a snapshot's files and its manifest (empty: intact, and its id is its content's)."""
    doc = read_manifest(root, snap)
    listed = [FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc.get("files", [])]
    problems = []
    if snapshot_id(listed) != snap:
        problems.append(f"the manifest hashes to {snapshot_id(listed)}, not {snap}")
    actual = {f.path: f for f in manifest_files(check_snapshot(root, snap))}
    for f in listed:
        if actual.pop(f.path, None) != f:
            problems.append(f"{f.path}: changed or missing")
    problems += [f"{p}: not in the manifest" for p in sorted(actual)]
    return problems


def remove_snapshot(root: Path, snap: str) -> None:
    """Delete a snapshot (never the current one). Renamed aside first, so a half-removed one is never served."""
    if read_current(root) == snap:
        raise SnapshotError(f"snapshot {snap} is current; point current elsewhere first")
    folder = snapshot_dir(root, snap)
    trash = root / SNAPSHOTS / f".removing-{snap}-{secrets.token_hex(4)}"
    os.rename(folder, trash)
    _make_writable(trash)
    shutil.rmtree(trash)


# -- the command ---------------------------------------------------------------------------------------------


def _referenced_by_records(settings: Any) -> set[str]:
    """Snapshots the session and report-run records in Redis name (live and recent sessions, kept runs)."""
    from launcher.bootstrap import build_report_service, build_store

    store = build_store(settings)
    sessions = [*store.list_live(), *store.list_recent(limit=100_000)]
    runs = build_report_service(settings, store).store.list_all(100_000)
    named = {s.snapshot for s in sessions} | {s.record.get("snapshot", "") for s in sessions}
    return (named | {r.snapshot for r in runs} | {r.record.get("snapshot", "") for r in runs}) - {""}


def _settings() -> Any:
    from launcher.settings import Settings  # only where needed: ``import`` runs on a host without the app's packages

    return Settings.of_checkout()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.snapshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="the data root (default: LAUNCHER_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_import = sub.add_parser("import", help="import a folder as a snapshot and make it current")
    p_import.add_argument("folder", type=Path)
    p_import.add_argument("--link", action="store_true", help="hard-link the files instead of copying them")
    p_import.add_argument("--no-current", action="store_true", help="do not point current at it")
    p_import.add_argument("--label", default="", help="where the data came from (default: the folder)")
    sub.add_parser("list", help="list the snapshots, newest first")
    p_current = sub.add_parser("current", help="print the current snapshot, or point current at ID")
    p_current.add_argument("id", nargs="?")
    p_verify = sub.add_parser("verify", help="check a snapshot's files against its manifest")
    p_verify.add_argument("id")
    p_prune = sub.add_parser("prune", help="remove snapshots nothing references")
    p_prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p_prune.add_argument(
        "--keep-recent", type=int, help="keep this many most recent snapshots (default: LAUNCHER_SNAPSHOT_KEEP_RECENT)"
    )
    p_prune.add_argument("--keep", action="append", default=[], metavar="ID", help="a snapshot to keep (repeatable)")
    p_prune.add_argument(
        "--no-records", action="store_true", help="do not ask Redis which snapshots session records reference"
    )
    args = parser.parse_args(argv)
    if args.root is not None:
        root = Path(args.root)
    elif os.environ.get("LAUNCHER_DATA_DIR"):
        root = Path(os.environ["LAUNCHER_DATA_DIR"])
    else:
        root = Path(_settings().data_dir)
    try:
        if args.command == "import":
            snap, new = create_snapshot(root, args.folder, link=args.link, label=args.label)
            if not args.no_current:
                set_current(root, snap)
            print(f"{snap} {'imported' if new else 'already present'}{'' if args.no_current else ', current'}")
        elif args.command == "list":
            current = read_current(root)
            if is_legacy(root):
                print(f"{LEGACY} (no snapshots: {root} itself is the data)")
            for s in list_snapshots(root):
                mark = "*" if s.id == current else " "
                when = f"{s.created_at:%Y-%m-%d %H:%M}"
                print(f"{mark} {s.id}  {when}  {s.files} files  {s.total_bytes} bytes  {s.source}")
        elif args.command == "current":
            if args.id:
                set_current(root, validate_id(args.id))
            print(read_current(root) or (LEGACY if is_legacy(root) else "none"))
        elif args.command == "verify":
            problems = verify_snapshot(root, validate_id(args.id))
            for line in problems:
                print(line)
            print(f"{args.id}: {'intact' if not problems else f'{len(problems)} problems'}")
            return 1 if problems else 0
        elif args.command == "prune":
            settings = _settings()
            keep_recent = settings.snapshot_keep_recent if args.keep_recent is None else args.keep_recent
            if keep_recent < 0:
                parser.error("--keep-recent must be 0 or more")
            referenced = set(args.keep) if args.no_records else set(args.keep) | _referenced_by_records(settings)
            plan = plan_prune(
                list_snapshots(root), current=read_current(root), referenced=referenced, keep_recent=keep_recent
            )
            verb = "would remove" if args.dry_run else "removed"
            for s, remove, why in plan:
                if remove and not args.dry_run:
                    remove_snapshot(root, s.id)
                print(f"{verb if remove else 'kept'}: {s.id} ({s.created_at:%Y-%m-%d}): {why}")
            print(f"{sum(r for _, r, _ in plan)} of {len(plan)} snapshots {verb}")
    except LauncherError as exc:
        print(f"error: {exc.log_message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
