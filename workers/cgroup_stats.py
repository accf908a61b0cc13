"""CPU and memory use of session containers, read from the host's cgroup files in the heartbeat.

``docker stats`` costs about a second per container on a small host (it waits for two samples); the
kernel's own counters cost a few file reads. For a container id this reads, under ``/sys/fs/cgroup``:

    cgroup v1 (Docker's cgroupfs driver)   cpuacct/docker/<id>/cpuacct.usage            CPU time, ns
                                           memory/docker/<id>/memory.usage_in_bytes      minus total_inactive_file
                                           memory/docker/<id>/memory.limit_in_bytes      (memory.stat)
    cgroup v2 (systemd driver; cgroupfs)   system.slice/docker-<id>.scope/ (or docker/<id>/)
                                           cpu.stat usage_usec, memory.current minus inactive_file
                                           (memory.stat), memory.max

Memory in use is counted as ``docker stats`` counts it (the inactive page cache is left out). Every read is
bounded in size; a missing or unreadable file gives None for its figure, never an error. The CPU percentage
is the counter's growth between two heartbeats over the wall time between them (100 = one CPU busy); the
previous sample is kept with the figures (``launcher.adapters.redis_stats``).

The files are the host's: a worker that runs in a container of its own sees its own cgroup namespace, where
these paths do not exist, and the figures stay empty.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from launcher.adapters.redis_stats import SessionStats, StatsStore
from launcher.models import Session, SessionStatus

CGROUP_ROOT = Path("/sys/fs/cgroup")
READ_MAX = 64 * 1024  # memory.stat is a few KiB; nothing here is read past this
UNLIMITED = 1 << 62  # cgroup v1 reports "no limit" as a page-rounded 2^63 - 1
_ID = re.compile(r"^[0-9a-f]{12,64}$")
_NUMBER = re.compile(r"^[0-9]{1,20}$")  # the counters are 64-bit


@dataclass(frozen=True)
class Sample:
    """One reading of a container's counters (None: not available)."""

    cpu_usage_ns: int | None
    mem_bytes: int | None
    mem_limit_bytes: int | None
    at: float  # wall clock, seconds since the epoch


def _read(path: Path) -> str | None:
    """At most ``READ_MAX`` bytes of a file, or None when it cannot be read."""
    try:
        with path.open("rb") as f:
            return f.read(READ_MAX).decode("ascii", errors="replace")
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if _NUMBER.fullmatch(text) else None


def _stat(path: Path, key: str) -> int | None:
    """The value of ``key`` in a flat ``name value`` file (memory.stat, cpu.stat)."""
    text = _read(path)
    if text is None:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value.strip()) if _NUMBER.fullmatch(value.strip()) else None
    return None


def _in_use(usage: int | None, inactive: int | None) -> int | None:
    if usage is None:
        return None
    return usage - inactive if inactive is not None and inactive < usage else usage


def _limit(value: int | None) -> int | None:
    return value if value is not None and 0 < value < UNLIMITED else None


def read_sample(container_id: str, root: Path = CGROUP_ROOT, now: float | None = None) -> Sample | None:
    """The counters of one container, or None when its cgroup is not found (stopped, or not visible here)."""
    if not _ID.fullmatch(container_id):
        return None
    at = time.time() if now is None else now
    cpu = root / "cpuacct" / "docker" / container_id
    mem = root / "memory" / "docker" / container_id
    if cpu.is_dir() or mem.is_dir():  # cgroup v1
        return Sample(
            cpu_usage_ns=_int(cpu / "cpuacct.usage"),
            mem_bytes=_in_use(_int(mem / "memory.usage_in_bytes"), _stat(mem / "memory.stat", "total_inactive_file")),
            mem_limit_bytes=_limit(_int(mem / "memory.limit_in_bytes")),
            at=at,
        )
    for group in (root / "system.slice" / f"docker-{container_id}.scope", root / "docker" / container_id):
        if group.is_dir():  # cgroup v2
            usec = _stat(group / "cpu.stat", "usage_usec")
            return Sample(
                cpu_usage_ns=usec * 1000 if usec is not None else None,
                mem_bytes=_in_use(_int(group / "memory.current"), _stat(group / "memory.stat", "inactive_file")),
                mem_limit_bytes=_limit(_int(group / "memory.max")),  # "max" (no limit) is not a number: None
                at=at,
            )
    return None


def cpu_percent(previous: SessionStats | None, sample: Sample) -> float | None:
    """CPU use between the previous heartbeat's sample and this one (None without a usable previous one)."""
    if previous is None or previous.cpu_usage_ns is None or previous.sampled_at is None or sample.cpu_usage_ns is None:
        return None
    wall = sample.at - previous.sampled_at
    used = sample.cpu_usage_ns - previous.cpu_usage_ns
    if wall <= 0 or used < 0:  # a clock step, or a new container under the same session: start over
        return None
    return round(100.0 * used / (wall * 1e9), 1)


def stats_of(sample: Sample, previous: SessionStats | None) -> SessionStats:
    return SessionStats(
        cpu_percent=cpu_percent(previous, sample),
        mem_bytes=sample.mem_bytes,
        mem_limit_bytes=sample.mem_limit_bytes,
        measured_at=datetime.fromtimestamp(sample.at, UTC),
        cpu_usage_ns=sample.cpu_usage_ns,
        sampled_at=sample.at,
    )


def record(stats: StatsStore, sessions: Iterable[Session], root: Path = CGROUP_ROOT) -> int:
    """Measure the running sessions' containers and store their figures; returns how many were measured."""
    measured = 0
    for session in sessions:
        if session.status != SessionStatus.RUNNING or not session.container_id:
            continue
        sample = read_sample(session.container_id, root)
        if sample is None:
            continue
        stats.put(session.id, stats_of(sample, stats.get(session.id)))
        measured += 1
    return measured
