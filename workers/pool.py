"""The warm pool: notebook servers booted ahead of demand on each host, per profile, claimed by a launch.

A pool container is a session container without a session: the same image, limits and isolation, no user
identity, no route a user knows (its folder and name carry a *slot* id, never a session id), its workspace path an
empty slot folder bound with ``rslave`` propagation (``workers.mounts``), and a low CPU weight while it boots. A
start whose host has an idle pool container of its profile *claims* it (``claim``):

    1. the store hands the slot to this session atomically (never two claims of one container);
    2. the user's workspace is prepared as for a cold start (quota, template) and bound onto the slot: it appears
       at /home/jovyan/work inside the running container;
    3. the session's identity is written where every Python process started afterwards reads it (/run/nbl/
       identity.json, docker/notebook/nbl_pool_env.py), the slot's folder is renamed to the session's (the entry
       point routes by session id) and the container is renamed to the session's container name and given the
       normal CPU weight;
    4. the session records the pool container's secret, slot and container id, and is running.

A claimed container is never returned to the pool: stop removes it, then unmounts the slot. Anything that fails
before the session runs destroys the pool container and the start goes on cold. ``Keeper`` (a thread in each
worker) refills the pool one container at a time, only while the host has room and no launch waits for room, and
shrinks it when launches wait. ``reconcile`` knows pool containers and their mounts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from launcher.adapters.jupyter_http import wait_ready
from launcher.errors import LauncherError
from launcher.logs import event
from launcher.models import HostState, Session
from launcher.settings import Settings
from launcher.spec import LABEL_PREFIX, WORKSPACE_MOUNT, build_container_spec, container_name
from workers import hostfs, labstatic, mounts, pyprefix
from workers.lifecycle import WorkerContext

log = logging.getLogger("launcher.worker")
POOL_LABEL = f"{LABEL_PREFIX}.pool"
POOL_CPU_SHARES = 128  # while idle or booting: a cold start in progress comes first
SESSION_CPU_SHARES = 1024  # Docker's default weight
_SLOT_ALPHABET = string.ascii_lowercase + string.digits


def new_slot() -> str:
    return "p" + "".join(secrets.choice(_SLOT_ALPHABET) for _ in range(11))


def pool_container_name(settings: Settings, slot: str) -> str:
    return f"{settings.instance}-pool-{slot}"


def build_pool_spec(
    settings: Settings,
    profile: str,
    slot: str,
    *,
    slot_dir: Path,
    rundir: Path,
    data: Path | None = None,
    static_url: str = "",
    python_prefix: Path | None = None,
) -> dict[str, Any]:
    """A session's container spec (``launcher.spec.build_container_spec``) for no session: no identity, the slot
    bound with ``rslave`` propagation at the workspace path, the pool's name and labels, a low CPU weight."""
    p = settings.profile(profile)
    stand_in = Session(
        id=slot,
        user="pool",
        template="pool",
        name="pool",
        profile=profile,
        cpus=p.cpus,
        mem_bytes=p.mem_bytes,
        pids_limit=p.pids_limit,
        token=SecretStr(""),
    )
    spec = build_container_spec(
        stand_in,
        settings,
        workspace=slot_dir,
        rundir=rundir,
        data=data,
        static_url=static_url,
        python_prefix=python_prefix,
    )
    del spec["volumes"][str(slot_dir)]
    del spec["environment"]["USER_ID"]
    spec.update(
        name=pool_container_name(settings, slot),
        labels={
            f"{LABEL_PREFIX}.instance": settings.instance,
            POOL_LABEL: slot,
            f"{LABEL_PREFIX}.profile": profile,
            f"{LABEL_PREFIX}.host": settings.host_name,
        },
        working_dir="/home/jovyan",  # a process whose cwd is the slot before the claim would keep the empty folder
        mounts=[
            {
                "Target": WORKSPACE_MOUNT,
                "Source": str(slot_dir),
                "Type": "bind",
                "ReadOnly": False,
                "BindOptions": {"Propagation": "rslave"},
            }
        ],
        cpu_shares=POOL_CPU_SHARES,
    )
    return spec


def wanted(settings: Settings) -> dict[str, int]:
    return {name: size for name, size in settings.pool_sizes.items() if size > 0}


def reserved(ctx: WorkerContext) -> tuple[float, int]:
    """CPUs and memory this host's pool containers hold (booting or idle): not offered to launches."""
    cpus, mem = 0.0, 0
    for record in ctx.store.pool_slots(ctx.settings.host_name).values():
        if record.get("state") in ("booting", "idle") and record.get("profile") in ctx.settings.profiles:
            p = ctx.settings.profile(record["profile"])
            cpus, mem = cpus + p.cpus, mem + p.mem_bytes
    return cpus, mem


# -- boot, destroy ---------------------------------------------------------------------------------------------------


def _data(ctx: WorkerContext) -> tuple[str, Path | None]:
    try:
        from launcher import snapshots
    except ImportError:  # pragma: no cover - before data snapshots
        return "", None
    snapshot, path = snapshots.resolve(ctx.settings.data_dir, "")
    return snapshot, path


def _image(ctx: WorkerContext) -> str:
    """The ID of the image sessions start on now ("" if the engine cannot tell)."""
    try:
        return labstatic.image_id(ctx.runtime, ctx.settings.notebook_image)
    except LauncherError:
        return ""


def boot(ctx: WorkerContext, profile: str) -> str | None:
    """Boot one pool container of ``profile`` and wait until its Jupyter answers; its slot, or None if it failed
    (whatever it made is removed)."""
    settings, slot, secret = ctx.settings, new_slot(), secrets.token_urlsafe(32)
    snapshot, data = _data(ctx)
    ctx.store.pool_register(settings.host_name, profile, slot, secret, snapshot=snapshot, image=_image(ctx))
    t0 = time.monotonic()
    try:
        mounts.prepare_root(settings)
        slot_dir = mounts.make_slot(settings, slot)
        rundir = hostfs.prepare_rundir(settings, slot, secret)
        shared = labstatic.ensure(settings, ctx.runtime, settings.notebook_image)
        prefix = pyprefix.ready(settings, ctx.runtime, settings.notebook_image)
        spec = build_pool_spec(
            settings,
            profile,
            slot,
            slot_dir=slot_dir,
            rundir=rundir,
            data=data,
            static_url=shared,
            python_prefix=prefix,
        )
        handle = ctx.runtime.start(spec)
        wait_ready(
            hostfs.socket_path(settings, slot),
            secret,
            timeout=settings.start_timeout_s,
            still_alive=lambda: ctx.runtime.state(handle.name).value == "running",
        )
        hostfs.lock_socket(settings, slot)
        hostfs.retire_secret(settings, slot)
    except Exception as exc:  # noqa: BLE001 - a pool container that failed to boot is simply not there
        tail = ""
        with contextlib.suppress(Exception):
            tail = ctx.runtime.logs(pool_container_name(settings, slot), tail=8)[-600:]
        event(
            log,
            "pool.boot_failed",
            level=logging.WARNING,
            slot=slot,
            profile=profile,
            error=repr(exc)[:300],
            output=tail,
        )
        destroy(ctx, slot)
        return None
    ctx.store.pool_ready(slot)
    took = round(time.monotonic() - t0, 3)
    event(log, "pool.ready", slot=slot, profile=profile, host=settings.host_name, boot_s=took)
    return slot


def destroy(ctx: WorkerContext, slot: str, *, session_id: str | None = None) -> None:
    """Remove a pool container (by its pool name, or its session's once claimed), then its mount, slot and folder,
    then its record. The workspace is never touched: the slot is unmounted, and removed only if empty."""
    names = [pool_container_name(ctx.settings, slot)]
    if session_id:
        names.append(container_name(ctx.settings, session_id))
    for name in names:
        with contextlib.suppress(LauncherError):
            ctx.runtime.stop(name, timeout=0)
    with contextlib.suppress(LauncherError, OSError):
        mounts.unbind(ctx.settings, slot)
    hostfs.remove_rundir(ctx.settings, slot)
    with contextlib.suppress(LauncherError):
        ctx.store.pool_forget(slot)


# -- claim -------------------------------------------------------------------------------------------------------------


def claim(ctx: WorkerContext, session: Session, workspace: Path, snapshot: str) -> tuple[str, str, str] | None:
    """Turn an idle pool container of this host and the session's profile into the session's container.

    ``workspace`` is the user's prepared workspace (template copied). Returns (slot, secret, container id), or None
    when no pool container fits (then the caller starts cold). A claim that fails half-way destroys the pool
    container and returns None.
    """
    settings = ctx.settings
    if session.profile not in wanted(settings) or session.image or session.template_sha256:
        return None  # pool containers run the current image; a relaunch pinned to an older one starts cold
    taken = ctx.store.pool_take(settings.host_name, session.profile, session.id)
    if taken is None:
        return None
    slot, secret = taken
    record = ctx.store.pool_slots(settings.host_name).get(slot, {})
    if session.snapshot and session.snapshot != record.get("snapshot") or snapshot != record.get("snapshot"):
        destroy(ctx, slot)  # booted on other data: not this session's (the pool refills on the current data)
        return None
    if record.get("image", "") != _image(ctx):
        destroy(ctx, slot)  # booted on an image since rebuilt: a session starts on the current one
        return None
    try:
        mounts.bind(settings, slot, workspace)
        hostfs.write_identity(settings, slot, {"USER_ID": session.user, "NBL_SESSION": session.id})
        hostfs.rename_rundir(settings, slot, session.id)
        handle = ctx.runtime.claim(
            pool_container_name(settings, slot), container_name(settings, session.id), SESSION_CPU_SHARES
        )
    except Exception as exc:  # noqa: BLE001 - the start goes on cold; nothing of the pool container is kept
        event(log, "pool.claim_failed", level=logging.WARNING, slot=slot, session_id=session.id, error=repr(exc)[:300])
        with contextlib.suppress(OSError, LauncherError):  # back under the slot's name, for destroy to remove
            hostfs.rename_rundir(settings, session.id, slot)
        destroy(ctx, slot, session_id=session.id)
        return None
    return slot, secret, handle.id


def release(ctx: WorkerContext, slot: str) -> None:
    """After a claimed container is removed: unmount its slot (the workspace stays) and forget it."""
    mounts.unbind(ctx.settings, slot)
    ctx.store.pool_forget(slot)


# -- keeping the pool --------------------------------------------------------------------------------------------------


def _host_room(ctx: WorkerContext) -> tuple[float, int] | None:
    info = ctx.store.host(ctx.settings.host_name)
    if info is None or info.state != HostState.UP:
        return None
    return info.free_cpus, info.free_mem_bytes


def tend(ctx: WorkerContext, on_room: Callable[[], None]) -> str:
    """One step of keeping the pool: shrink by one while launches wait for room; else boot one where the pool is
    below its size and the host has room for it; else nothing. Returns what it did."""
    settings, host = ctx.settings, ctx.settings.host_name
    sizes = wanted(settings)
    slots = ctx.store.pool_slots(host)
    if ctx.store.queue_stats()["depth"] > 0:
        for profile in sizes:
            slot = ctx.store.pool_take_idle(host, profile)
            if slot is not None:
                destroy(ctx, slot)
                on_room()
                return f"shrunk {profile}"
        return "queue waiting"
    for slot, record in slots.items():  # more idle containers than the size now configured (a restart changed it)
        profile = record.get("profile", "")
        idle = [s for s, r in slots.items() if r.get("profile") == profile and r.get("state") == "idle"]
        if (
            record.get("state") == "idle"
            and len(idle) > sizes.get(profile, 0)
            and ctx.store.pool_retire(host, profile, slot)
        ):
            destroy(ctx, slot)
            return f"retired {slot} (pool smaller now)"
    current, _ = _data(ctx)
    for slot, record in slots.items():  # idle containers booted on data that is no longer current
        stale = record.get("state") == "idle" and record.get("snapshot", "") != current
        if stale and ctx.store.pool_retire(host, record.get("profile", ""), slot):
            destroy(ctx, slot)
            return f"retired {slot} (data moved on)"
    image = _image(ctx)
    for slot, record in slots.items():  # idle containers of an image since rebuilt (the tag points elsewhere now)
        stale = bool(image) and record.get("state") == "idle" and record.get("image", "") != image
        if stale and ctx.store.pool_retire(host, record.get("profile", ""), slot):
            destroy(ctx, slot)
            return f"retired {slot} (image rebuilt)"
    if any(s.status.value == "starting" and not s.pool_slot for s in ctx.store.list_live(host)):
        return "cold start in progress"  # a cold start gets the CPU: the pool refills after it
    for profile, size in sizes.items():
        have = sum(1 for r in slots.values() if r.get("profile") == profile and r.get("state") in ("booting", "idle"))
        if have >= size:
            continue
        room = _host_room(ctx)
        p = settings.profile(profile)
        if room is None or room[0] + 1e-9 < p.cpus or room[1] < p.mem_bytes:
            return "no room"
        return "booted" if boot(ctx, profile) else "boot failed"
    return "full"


class Keeper(threading.Thread):
    """Keeps this host's pool at its size (one container at a time), until stopped."""

    def __init__(self, ctx: WorkerContext, on_room: Callable[[], None], interval: float = 1.0) -> None:
        super().__init__(name="pool-keeper", daemon=True)
        self.ctx, self.on_room, self.interval = ctx, on_room, interval
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                tend(self.ctx, self.on_room)
            except LauncherError as exc:
                event(log, "pool.tend_failed", level=logging.WARNING, error=exc.log_message)
            except Exception:  # noqa: BLE001 - the keeper must outlive any one failure
                log.exception("pool.tend_crashed")
            self._stop.wait(self.interval)


# -- reconcile ---------------------------------------------------------------------------------------------------------


def reconcile(ctx: WorkerContext) -> dict[str, int]:
    """Make the pool's containers, mounts and records agree (never deleting a workspace):

    - a pool container with no record, or one whose record is not idle or booting and that is still under its pool
      name (a worker died between the mount and the claim record) is destroyed, its slot unmounted;
    - a record whose container is gone is forgotten; a mounted slot whose container is gone is unmounted;
    - empty slot folders of nothing are removed (rmdir).
    """
    settings, host = ctx.settings, ctx.settings.host_name
    counts = {"destroyed": 0, "forgotten": 0, "unmounted": 0}
    records = ctx.store.pool_slots(host)
    containers = [c for c in ctx.runtime.list_managed(settings.instance) if c.pool_slot]
    by_slot = {c.pool_slot: c for c in containers if c.labels.get(f"{LABEL_PREFIX}.host", host) == host}
    for slot, c in by_slot.items():
        record = records.get(slot)
        claimed_by = c.session_id  # renamed to its session's name by a claim
        if claimed_by:
            session = ctx.store.get(claimed_by)
            if session is None or not session.status.live:
                destroy(ctx, slot, session_id=claimed_by)
                counts["destroyed"] += 1
            continue
        if record is None or record.get("state") not in ("booting", "idle"):
            destroy(ctx, slot)
            counts["destroyed"] += 1
    for slot, record in records.items():
        if slot not in by_slot and record.get("state") != "booting":
            destroy(ctx, slot)
            counts["forgotten"] += 1
    for slot in mounts.mounted_slots(settings):
        if slot not in by_slot:
            with contextlib.suppress(LauncherError, OSError):
                mounts.unbind(settings, slot)
                counts["unmounted"] += 1
    for slot in mounts.existing_slots(settings):
        if slot not in by_slot and slot not in records:
            with contextlib.suppress(OSError):
                mounts.slot_path(settings, slot).rmdir()
    return counts
