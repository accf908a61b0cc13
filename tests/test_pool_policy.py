"""How the warm pool's keeper decides (workers.pool.tend), on fakeredis and the in-memory runtime: it never holds
more idle containers than configured, gives its room up while launches wait, and waits while a cold start runs."""

from __future__ import annotations

import fakeredis
import pytest

from launcher.adapters.memory_runtime import FakeRuntime
from launcher.adapters.redis_store import SessionStore
from launcher.models import Session, SessionStatus, new_session_id, new_token
from tests.helpers import bring_to, register_hosts
from workers import labstatic, pool
from workers.lifecycle import WorkerContext


@pytest.fixture(autouse=True)
def _no_cached_image_ids(monkeypatch):
    """Image IDs looked up by other tests (on the real engine) are not this in-memory runtime's."""
    monkeypatch.setattr(labstatic, "_IDS", {})


@pytest.fixture
def ctx(unit_settings):
    settings = unit_settings.model_copy(update={"pool_sizes": {"standard": 1}})
    store = SessionStore(fakeredis.FakeRedis(decode_responses=True), settings)
    register_hosts(store, settings.host_name)
    return WorkerContext(settings, store, FakeRuntime())


def idle_pool(ctx: WorkerContext, n: int) -> list[str]:
    slots = [pool.new_slot() for _ in range(n)]
    for slot in slots:
        ctx.store.pool_register(ctx.settings.host_name, "standard", slot, "secret", snapshot="legacy")
        ctx.store.pool_ready(slot)
    return slots


def states(ctx: WorkerContext) -> list[str]:
    return sorted(r["state"] for r in ctx.store.pool_slots(ctx.settings.host_name).values())


def test_idle_containers_beyond_the_configured_size_are_retired(ctx):
    idle_pool(ctx, 3)  # a restart made the pool smaller: 3 idle, 1 wanted
    assert pool.tend(ctx, lambda: None).endswith("(pool smaller now)")
    assert pool.tend(ctx, lambda: None).endswith("(pool smaller now)")
    assert states(ctx) == ["idle"]
    assert pool.tend(ctx, lambda: None) == "full"


def test_the_pool_gives_its_room_to_waiting_launches(ctx):
    idle_pool(ctx, 1)
    ctx.store.set_draining(ctx.settings.host_name, True)
    waiting, _ = ctx.store.launch(
        Session(id=new_session_id(), user="ann", template="alpha_research", token=new_token()), actor="ann"
    )
    assert waiting.status == SessionStatus.WAITING
    told = []
    assert pool.tend(ctx, lambda: told.append("room")) == "shrunk standard"
    assert told == ["room"] and states(ctx) == []
    assert pool.tend(ctx, lambda: None) == "queue waiting"  # and boots nothing while the launch waits


def test_no_refill_while_a_cold_start_runs(ctx):
    started = ctx.store.reserve(
        Session(id=new_session_id(), user="bob", template="alpha_research", token=new_token()), actor="bob"
    )
    bring_to(ctx.store, started.id, SessionStatus.STARTING)
    assert pool.tend(ctx, lambda: None) == "cold start in progress"


class _Images(FakeRuntime):
    """The in-memory runtime with an image tag that a rebuild moves."""

    current = "sha256:" + "1" * 64

    def image_id(self, ref: str) -> str:
        return self.current


def test_idle_containers_of_a_rebuilt_image_are_retired_and_never_claimed(unit_settings, monkeypatch):
    """A rebuilt notebook image (the tag moved) must not be handed out from containers booted before: the keeper
    retires them, and a claim racing the keeper starts cold instead."""
    settings = unit_settings.model_copy(update={"pool_sizes": {"standard": 2}})
    store = SessionStore(fakeredis.FakeRedis(decode_responses=True), settings)
    register_hosts(store, settings.host_name)
    runtime = _Images()
    ctx = WorkerContext(settings, store, runtime)
    snapshot, _ = pool._data(ctx)
    old, new = pool.new_slot(), pool.new_slot()
    store.pool_register(settings.host_name, "standard", old, "s", snapshot=snapshot, image=runtime.current)
    store.pool_ready(old)
    runtime.current = "sha256:" + "2" * 64
    monkeypatch.setattr(labstatic, "_IDS", {})
    store.pool_register(settings.host_name, "standard", new, "s", snapshot=snapshot, image=runtime.current)
    store.pool_ready(new)

    assert pool.tend(ctx, lambda: None) == f"retired {old} (image rebuilt)"
    assert set(store.pool_slots(settings.host_name)) == {new}

    runtime.current = "sha256:" + "3" * 64  # rebuilt again, before the keeper's next step
    monkeypatch.setattr(labstatic, "_IDS", {})
    session = Session(id=new_session_id(), user="ann", template="alpha_research", token=new_token())
    assert pool.claim(ctx, session, settings.workspaces_dir / "ann", snapshot) is None
    assert store.pool_slots(settings.host_name) == {}
