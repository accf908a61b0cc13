"""Fixtures: a private real Redis, and for Docker tests the whole per-host stack.

The stack is real: nginx as the entry point, a Celery worker subprocess, the notebook image on the
local Docker engine, sample data generated inside that image. Everything runs on loopback and is
stopped by the PID we started. Without a Docker engine or the image, Docker tests skip, unless
``LAUNCHER_REQUIRE_DOCKER=1`` (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from launcher.settings import Settings
from tests.engines import second_engine  # noqa: F401  (a second Docker engine, for multi-host tests)
from tests.stack import Stack, docker_client, random_instance, start_redis, start_stack, unmount_below

IMAGE = os.environ.get("LAUNCHER_NOTEBOOK_IMAGE", "launcher-notebook:latest")
REQUIRE_DOCKER = os.environ.get("LAUNCHER_REQUIRE_DOCKER") == "1"


def _tmpdir(prefix: str) -> Path:
    # Under /tmp, mode 0755: the entry point's workers (not root) must traverse to the sockets.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = _tmpdir("nbl-test-")
    yield path
    unmount_below(path)  # never remove files through a still-mounted workspace image
    if os.environ.get("LAUNCHER_TEST_KEEP") == "1":
        print(f"\ntest folders and logs kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    """A real redis-server of our own on a free loopback port, requiring a password (it is in the URL)."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    proc, url = start_redis(workdir)
    yield url
    proc.stop()


@pytest.fixture
def unit_settings(tmp_path: Path) -> Settings:
    """Settings for tests that need no Docker: templates from the repo, folders in tmp, generated secrets.

    Quotas are measured, not mounted: these tests run no container that would unmount a workspace image
    (tests/test_quota.py tests the filesystem quotas with real containers)."""
    return Settings(
        instance=random_instance(),
        workspaces_dir=tmp_path / "workspaces",
        sessions_dir=tmp_path / "sessions",
        data_dir=tmp_path / "data",
        workspace_images_dir=tmp_path / "workspace-images",
        workspace_quota_enforce="measure",
        pool_sizes={},
        pool_slots_dir=tmp_path / "pool-slots",
        template_store_dir=tmp_path / "template-store",
        reports_dir=tmp_path / "reports",
        lab_static_dir=tmp_path / "lab-static",
        python_prefix_bind=False,
        python_prefix_dir=tmp_path / "python-prefix",
        cookie_secret=secrets.token_urlsafe(32),
        flower_password=secrets.token_urlsafe(16),
    )


# -- the Docker stack -----------------------------------------------------------------------------


def docker_or_skip() -> docker.DockerClient:
    try:
        return docker_client(IMAGE)
    except Exception as exc:
        reason = f"needs the Docker engine and image {IMAGE} (scripts/build-images.sh): {exc}"
        if REQUIRE_DOCKER:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def stack(workdir: Path, redis_url: str) -> Iterator[Stack]:
    client = docker_or_skip()
    stack = start_stack(workdir / "stack", redis_url, client, notebook_image=IMAGE)
    try:
        yield stack
    finally:
        stack.shutdown()


@pytest.fixture
def clean_stack(stack: Stack) -> Iterator[Stack]:
    """The stack with no live session before and after the test."""
    stack.stop_everything()
    assert stack.worker.alive(), stack.worker.tail()
    yield stack
    stack.stop_everything()


# -- a real browser ----------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium through Playwright, headless."""
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Loopback only: *.localhost (session origins) maps to 127.0.0.1, no other hostname resolves (no DNS
        # query leaves), and new_context() aborts the rest.
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        )
        yield b
        b.close()
