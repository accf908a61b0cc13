"""A host announces itself: what its engine offers sessions, and that its worker is alive.

Every worker runs a ``Beacon`` thread that registers its host in Redis every ``host_beacon_interval_s``
(``SessionStore.register_host``). A host that has not announced itself for ``host_down_after_s`` is down:
new launches avoid it, its sessions show as "host unreachable" and are not reaped, launches placed on it but
not started go back to the queue. A host that is new, or announces itself again after being down, is
reconciled and the queue is given the room it brings. Nothing lists the hosts anywhere else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from launcher.errors import LauncherError
from launcher.logs import event
from launcher.ports import EngineCapacity
from launcher.settings import Settings, parse_size
from workers.lifecycle import WorkerContext

log = logging.getLogger("launcher.worker")
CAPACITY_REFRESH_S = 60.0  # how often the engine is asked again what it has


@dataclass(frozen=True)
class Offer:
    """What a host offers sessions: CPUs (with the overcommit) and memory, after the reserve."""

    cpus: float
    mem_bytes: int


def host_offer(settings: Settings, engine: EngineCapacity) -> Offer:
    """The engine's CPUs and memory minus the reserve kept for the host itself; CPUs times the overcommit."""
    cpus = max(0.0, engine.cpus - settings.host_reserve_cpus) * settings.host_cpu_overcommit
    mem = max(0, engine.mem_bytes - parse_size(settings.host_reserve_mem))
    return Offer(cpus=round(cpus, 3), mem_bytes=mem)


def announce(ctx: WorkerContext, engine: EngineCapacity) -> bool:
    """Register this host once; True when it is new or back after being down. What its warm pool holds (booting
    or idle containers) is not offered to launches."""
    from workers import pool

    offer = host_offer(ctx.settings, engine)
    pool_cpus, pool_mem = pool.reserved(ctx)
    return ctx.store.register_host(
        ctx.settings.host_name,
        cpus=max(0.0, offer.cpus - pool_cpus),
        mem_bytes=max(0, offer.mem_bytes - pool_mem),
        engine_cpus=engine.cpus,
        engine_mem=engine.mem_bytes,
        max_sessions=ctx.settings.max_sessions_per_host,
    )


class Beacon(threading.Thread):
    """Announces the host until stopped; calls ``on_return`` when the host is new or comes back."""

    def __init__(self, ctx: WorkerContext, on_return: Callable[[], None]) -> None:
        super().__init__(name="host-beacon", daemon=True)
        self.ctx = ctx
        self.on_return = on_return
        self._stop = threading.Event()
        self._engine: EngineCapacity | None = None
        self._engine_age = CAPACITY_REFRESH_S

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """One announcement (the engine's capacity asked at most once a minute)."""
        interval = self.ctx.settings.host_beacon_interval_s
        if self._engine is None or self._engine_age >= CAPACITY_REFRESH_S:
            self._engine, self._engine_age = self.ctx.runtime.capacity(), 0.0
        self._engine_age += interval
        if announce(self.ctx, self._engine):
            event(log, "host.announced", host=self.ctx.settings.host_name, cpus=self._engine.cpus)
            self.on_return()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except LauncherError as exc:  # Redis or the engine away: the host shows as down until it answers
                event(log, "host.announce_failed", level=logging.WARNING, error=exc.log_message)
            except Exception:  # noqa: BLE001 - the beacon must outlive any one failure
                log.exception("host.announce_crashed")
            self._stop.wait(self.ctx.settings.host_beacon_interval_s)
