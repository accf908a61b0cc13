"""Pruning of notebook images: the rule (pure) and the command against the real engine."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from launcher.images import ImageInfo, parse_created, plan_prune
from launcher.settings import REPO_ROOT

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def image(n: int, *tags: str, age_days: float) -> ImageInfo:
    return ImageInfo(id=f"sha256:{n:064x}", tags=tags, created=NOW - timedelta(days=age_days))


def plan(images, keep_ids=(), retention_days=30, **kw):
    decisions = plan_prune(
        images,
        current_tag="launcher-notebook:latest",
        keep_ids=set(keep_ids),
        retention_days=retention_days,
        now=NOW,
        **kw,
    )
    return {d.image.id: d for d in decisions}


def test_the_current_image_is_kept_however_old():
    cur = image(1, "launcher-notebook:aaaaaaaaaaaa", "launcher-notebook:latest", age_days=400)
    d = plan([cur])[cur.id]
    assert not d.remove and d.reason.startswith("current")
    assert d.tags == ("launcher-notebook:aaaaaaaaaaaa", "launcher-notebook:latest")


def test_a_referenced_image_is_kept_however_old_by_full_or_short_id():
    full = image(2, "launcher-notebook:bbbbbbbbbbbb", age_days=1000)
    short = image(3, "launcher-notebook:cccccccccccc", age_days=1000)
    decisions = plan([full, short], keep_ids={full.id, short.id.removeprefix("sha256:")[:12]})
    assert [decisions[i.id].remove for i in (full, short)] == [False, False]
    assert decisions[full.id].reason == "referenced"


def test_an_unreferenced_image_older_than_the_retention_is_removed():
    old = image(4, "launcher-notebook:dddddddddddd", age_days=31)
    d = plan([old], retention_days=30)[old.id]
    assert d.remove and d.tags == ("launcher-notebook:dddddddddddd",)


def test_a_newer_image_is_kept():
    new = image(5, "launcher-notebook:eeeeeeeeeeee", age_days=29)
    d = plan([new], retention_days=30)[new.id]
    assert not d.remove and "newer" in d.reason
    assert plan([new], retention_days=0)[new.id].remove


def test_images_of_other_repositories_are_never_touched():
    other = image(6, "launcher-base:bookworm", age_days=900)
    lookalike = image(7, "launcher-notebook-old:x", "registry:5000/launcher-notebook:x", age_days=900)
    untagged = image(8, age_days=900)
    shared = image(9, "launcher-notebook:ffffffffffff", "mylab/research:v1", age_days=900)
    decisions = plan([other, lookalike, untagged, shared])
    assert set(decisions) == {shared.id}
    # only the launcher-notebook tag is removed: the image stays, under its other name
    assert decisions[shared.id].remove and decisions[shared.id].tags == ("launcher-notebook:ffffffffffff",)


def test_match_limits_the_tags_considered():
    a = image(10, "launcher-notebook:prunetest-1", age_days=90)
    b = image(11, "launcher-notebook:123456789abc", age_days=90)
    assert set(plan([a, b], match="prunetest-*")) == {a.id}


def test_parse_created_reads_the_engines_nanoseconds():
    assert parse_created("2026-11-26T10:11:12.123456789Z") == datetime(2026, 11, 26, 10, 11, 12, 123456, tzinfo=UTC)
    assert parse_created("2026-11-26T10:11:12+02:00") == datetime(2026, 11, 26, 8, 11, 12, tzinfo=UTC)


# -- the command, against the real engine ------------------------------------------------------------------------


@pytest.mark.docker
def test_prune_script_removes_an_old_unreferenced_tag_and_dry_run_keeps_it():
    """A throwaway tag of an existing small image (nothing is built): the dry run keeps it, the real run removes
    it, and the image itself stays under its own name."""
    from tests.conftest import docker_or_skip

    client = docker_or_skip()
    source = "launcher-base:bookworm"  # built by scripts/build-images.sh before the notebook image
    src = client.images.get(source)
    tag = f"prunetest-{uuid.uuid4().hex[:12]}"
    ref = f"launcher-notebook:{tag}"
    assert src.tag("launcher-notebook", tag)
    env = {k: v for k, v in os.environ.items() if k != "LAUNCHER_NOTEBOOK_IMAGE"}

    def prune(*args: str) -> subprocess.CompletedProcess[str]:
        # --match: only this test's tag is ever considered, whatever else is on the engine
        cmd = [str(REPO_ROOT / "scripts" / "prune-images.sh"), "--keep-days", "0", "--match", tag, "--no-records", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    try:
        dry = prune("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would remove: {ref}" in dry.stdout
        assert ref in client.images.get(source).tags

        real = prune()
        assert real.returncode == 0, real.stdout + real.stderr
        assert f"removed: {ref}" in real.stdout
        assert ref not in client.images.get(source).tags
        assert source in client.images.get(source).tags
    finally:
        if ref in client.images.get(source).tags:
            client.images.remove(ref)
