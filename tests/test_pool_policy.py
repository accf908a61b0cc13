"""How the warm pool's keeper decides (workers.pool.tend), on fakeredis and the in-memory runtime: it never holds
more idle containers than configured, gives its room up while launches wait, and waits while a cold start runs."""

from __future__ import annotations

import fakeredis
import pytest

from launcher.adapters.memory_runtime import FakeRuntime
from launcher.adapters.redis_store import SessionStore
from launcher.models import Session, SessionStatus, new_session_id, new_token
from tests.helpers import bring_to, register_hosts
from workers import pool
from workers.lifecycle import WorkerContext


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
