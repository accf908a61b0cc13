"""Which notebook images to keep: pruning of ``launcher-notebook:*`` images.

scripts/build-images.sh tags every notebook image by the hash of its inputs (``launcher-notebook:<12 hex>``) and
points ``launcher-notebook:latest`` at the newest. Old images stay on the host so that a record which names one can
still be re-run. :func:`plan_prune` is the rule, pure and unit-tested; :func:`prune_images` applies it through a
docker-py client; ``python -m launcher.images prune`` (scripts/prune-images.sh) is the command.

An image is kept when it is the current one (the image the current tag points at), when its ID is in ``keep_ids``
(records reference it, or a container uses it), or when it is younger than the retention; otherwise its
``launcher-notebook`` tags are removed. Tags of other repositories are never touched, so an image that also has
one stays (only untagged from ``launcher-notebook``).
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shutil
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

REPOSITORY = "launcher-notebook"
DEFAULT_CURRENT_TAG = f"{REPOSITORY}:latest"
DEFAULT_RETENTION_DAYS = 30


@dataclass(frozen=True)
class ImageInfo:
    """One image as the engine lists it: its ID, all its tags (any repository) and when it was created."""

    id: str
    tags: tuple[str, ...]
    created: datetime


@dataclass(frozen=True)
class Decision:
    """What to do with one image that has ``launcher-notebook`` tags: remove those tags or keep them, and why."""

    image: ImageInfo
    tags: tuple[str, ...]  # its tags in REPOSITORY only
    remove: bool
    reason: str
    error: str | None = None  # why the engine refused to remove a tag (prune_images)


def _bare_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:").lower()


def _repository(tag: str) -> str:
    # "registry:5000/name:tag" -> "registry:5000/name"; a reference without a tag is its own repository.
    name, sep, rest = tag.rpartition(":")
    return name if sep and "/" not in rest else tag


def _referenced(image_id: str, keep_ids: Collection[str]) -> bool:
    """Whether the image is in keep_ids, by full ID or by a short ID (a prefix of 12 or more hex digits)."""
    bare = _bare_id(image_id)
    return any(len(k) >= 12 and bare.startswith(k) for k in (_bare_id(i) for i in keep_ids))


def plan_prune(
    images: Iterable[ImageInfo],
    *,
    current_tag: str,
    keep_ids: Collection[str],
    retention_days: float,
    now: datetime,
    repository: str = REPOSITORY,
    match: str = "*",
) -> list[Decision]:
    """Decide, for each image with a tag in ``repository`` (its tag part matching the glob ``match``), whether to
    remove those tags. Images without such a tag are left out of the answer: they are never touched.

    Kept: the image ``current_tag`` points at (all its tags), images whose ID is in ``keep_ids``, images created
    less than ``retention_days`` before ``now``. Removed: the rest, oldest first."""
    images = list(images)
    current_ids = {_bare_id(i.id) for i in images if current_tag in i.tags}
    cutoff = now - timedelta(days=retention_days)
    decisions = []
    for image in sorted(images, key=lambda i: i.created):
        ours = tuple(
            t
            for t in image.tags
            if _repository(t) == repository and fnmatch.fnmatchcase(t[len(repository) + 1 :], match)
        )
        if not ours:
            continue
        if _bare_id(image.id) in current_ids:
            decisions.append(Decision(image, ours, False, f"current ({current_tag})"))
        elif _referenced(image.id, keep_ids):
            decisions.append(Decision(image, ours, False, "referenced"))
        elif image.created > cutoff:
            decisions.append(Decision(image, ours, False, f"newer than {retention_days:g} days"))
        else:
            decisions.append(Decision(image, ours, True, f"unreferenced, older than {retention_days:g} days"))
    return decisions


# -- docker-py ------------------------------------------------------------------------------------------------


class ImageClient(Protocol):
    """The part of docker-py's ``DockerClient`` used here."""

    @property
    def images(self) -> Any: ...

    @property
    def containers(self) -> Any: ...


def parse_created(value: str) -> datetime:
    """The engine's ``Created`` (RFC 3339 with up to nanoseconds) as an aware datetime."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", value)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    base, frac, zone = m.groups()
    text = base + (f".{(frac or '')[:6]:0<6}") + ("+00:00" if zone == "Z" else zone)
    return datetime.fromisoformat(text).astimezone(UTC)


def list_images(client: ImageClient) -> list[ImageInfo]:
    return [
        ImageInfo(id=str(img.id), tags=tuple(img.tags), created=parse_created(str(img.attrs["Created"])))
        for img in client.images.list()
    ]


def container_image_ids(client: ImageClient) -> set[str]:
    """The images of all containers, running or stopped: the engine refuses to remove those anyway."""
    return {str(c.attrs["Image"]) for c in client.containers.list(all=True, ignore_removed=True)}


def prune_images(
    client: ImageClient,
    keep_ids: Collection[str],
    retention_days: float,
    dry_run: bool,
    *,
    current_tag: str = DEFAULT_CURRENT_TAG,
    match: str = "*",
    now: datetime | None = None,
) -> list[Decision]:
    """Remove the ``launcher-notebook`` tags :func:`plan_prune` chooses (unless ``dry_run``): an image whose last
    tag goes is deleted by the engine. Images used by a container are kept too. Returns the decisions; a tag the
    engine refuses to remove is recorded in its decision's ``error`` and the rest go on."""
    from_containers = container_image_ids(client)
    decisions = plan_prune(
        list_images(client),
        current_tag=current_tag,
        keep_ids=set(keep_ids) | from_containers,
        retention_days=retention_days,
        now=now or datetime.now(UTC),
        match=match,
    )
    if dry_run:
        return decisions
    done = []
    for d in decisions:
        errors = []
        for tag in d.tags if d.remove else ():
            try:
                client.images.remove(tag, noprune=False)
            except Exception as exc:  # docker.errors.APIError: e.g. a container started from it meanwhile
                errors.append(f"{tag}: {exc}")
        done.append(replace(d, error="; ".join(errors)) if errors else d)
    return done


def prune_host_copies(folders: Iterable[Path], image_ids: Collection[str]) -> list[Path]:
    """Remove the per-image host copies (``workers.labstatic``, ``workers.pyprefix``: folders named by the first 16
    hex of an image ID) whose image the engine no longer has; the folders removed. Hidden entries (a copy in
    progress, the lock) stay."""
    keys = {_bare_id(i)[:16] for i in image_ids}
    removed = []
    for base in folders:
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            copy = re.fullmatch(r"[0-9a-f]{16}", entry.name) and entry.is_dir() and not entry.is_symlink()
            if copy and entry.name not in keys:
                shutil.rmtree(entry)
                removed.append(entry)
    return removed


def _docker_client() -> ImageClient:
    import docker  # this module is also a process entry point (``python -m launcher.images``)

    client: ImageClient = docker.from_env(timeout=60)
    return client


def referenced_by_records(settings: Any) -> set[str]:
    """Image IDs the kept session and report-run records ran on (``record.image_id``, and a relaunch's or a
    reproduction's pinned ``image``): an image stays while a record that "relaunch exactly" or ``launcher
    reproduce`` may need references it."""
    from launcher.adapters.redis_reports import ReportStore
    from launcher.adapters.redis_store import SessionStore

    store = SessionStore.from_settings(settings)
    sessions = store.list_recent(limit=10_000)
    runs = ReportStore(store).image_ids()
    return {i for s in sessions for i in (s.record.get("image_id", ""), s.image) if i} | runs


def main(argv: Sequence[str] | None = None) -> int:
    from launcher.settings import Settings

    settings = Settings.of_checkout()
    parser = argparse.ArgumentParser(prog="python -m launcher.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="remove old, unreferenced launcher-notebook images")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument(
        "--keep-days",
        type=float,
        default=settings.image_retention_days,
        help="keep images younger than this many days (default: LAUNCHER_IMAGE_RETENTION_DAYS, %(default)s)",
    )
    p.add_argument("--keep-id", action="append", default=[], metavar="ID", help="an image ID to keep (repeatable)")
    p.add_argument(
        "--current",
        default=settings.notebook_image,
        help="the current image's tag, always kept (default: LAUNCHER_NOTEBOOK_IMAGE, %(default)s)",
    )
    p.add_argument("--match", default="*", help="only tags whose tag part matches this glob (default: all)")
    p.add_argument(
        "--no-records", action="store_true", help="do not ask Redis which images kept session records ran on"
    )
    args = parser.parse_args(argv)
    if args.keep_days < 0:
        parser.error("--keep-days must be 0 or more")
    keep = set(args.keep_id)
    if not args.no_records:
        try:
            keep |= referenced_by_records(settings)
        except Exception as exc:  # noqa: BLE001 - without the records nothing is removed
            print(f"cannot read the session records ({exc!r:.200}); nothing removed (--no-records to go on)")
            return 1
    decisions = prune_images(
        _docker_client(),
        keep,
        args.keep_days,
        args.dry_run,
        current_tag=args.current,
        match=args.match,
    )
    verb = "would remove" if args.dry_run else "removed"
    for d in decisions:
        what = ("not removed" if d.error else verb) if d.remove else "kept"
        line = f"{what}: {' '.join(d.tags)} ({_bare_id(d.image.id)[:12]}, {d.image.created:%Y-%m-%d}): {d.reason}"
        print(line + (f": {d.error}" if d.error else ""))
    if not args.dry_run:
        copies = (settings.lab_static_dir, settings.python_prefix_dir)
        for folder in prune_host_copies(copies, [i.id for i in list_images(_docker_client())]):
            print(f"removed the host copy {folder} (its image is gone)")
    failed = sum(bool(d.error) for d in decisions)
    removed = sum(d.remove for d in decisions) - failed
    summary = "to remove (dry run)" if args.dry_run else "removed"
    print(f"{REPOSITORY}: {removed} of {len(decisions)} images {summary}" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
