"""Benchmark: the admission queue and placement (issue 11).

    python bench/admission.py [--hosts 50] [--per-host 200] [--samples 500] [--queue 1000] [--e2e 20]

Scale (a real Redis, no Docker): ``--hosts`` registered hosts each holding ``--per-host`` live sessions (stand-in
records, as the heartbeat simulation uses), then
  - the launch step (one Lua call: the user's limits, the queue, placement over every host) timed ``--samples``
    times with room on one host only (the placement scans them all), p50/p99;
  - queue throughput: ``--queue`` launches waiting, then room freed on every host at once; one admission step
    admits them in order; admissions per second;
  - admission latency in the store: one session ends, how long until the head of the queue is admitted.
End to end (``--e2e N``, a real stack: Redis, a worker, Docker, Jupyter): room for 2 sessions, both running, a
third launch waiting; one is stopped through the service. Measured: stop request to the waiting launch admitted
(the worker's stop task admits it), and to it running. N rounds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from launcher.adapters.redis_store import SessionStore  # noqa: E402
from launcher.models import Actor, Reason, Role, Session, SessionStatus, new_session_id, new_token  # noqa: E402
from launcher.settings import Settings  # noqa: E402
from launcher.transitions import ActorKind, By, MarkStopped, RequestStop  # noqa: E402
from tests.stack import docker_client, random_instance, start_redis, start_stack  # noqa: E402

GIB = 2**30


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, values: list[float], unit: float = 1000, suffix: str = "ms") -> str:
    return (
        f"{label}: p50 {pct(values, 0.5) * unit:.2f} {suffix}, p99 {pct(values, 0.99) * unit:.2f} {suffix}, "
        f"max {max(values) * unit:.2f} {suffix} (n={len(values)})"
    )


def session(user: str, cpus: float = 1.0, mem_gib: float = 1.0) -> Session:
    return Session(id=new_session_id(), user=user, template="alpha_research", token=new_token(), cpus=cpus,
                   mem_bytes=int(mem_gib * GIB), name="bench")


def end(store: SessionStore, s: Session) -> None:
    store.apply(s.id, RequestStop(by=By(ActorKind.ADMIN, "bench"), reason=Reason.ADMIN))
    store.apply(s.id, MarkStopped(by=By(ActorKind.WORKER, s.host or ""), reason=Reason.ADMIN))


def scale(redis_url: str, n_hosts: int, per_host: int, samples: int, queue: int) -> list[str]:
    settings = Settings(instance=random_instance(), redis_url=redis_url, max_sessions=10**6,
                        max_sessions_per_host=per_host + 1, max_sessions_per_user=1)
    store = SessionStore(redis.Redis.from_url(settings.redis_dsn(), decode_responses=True), settings)
    out = []
    # Hosts full (per_host 1-CPU sessions, room for exactly that), then filled with live stand-in records.
    for h in range(n_hosts):
        store.register_host(f"h{h:03d}", cpus=per_host, mem_bytes=per_host * GIB, max_sessions=per_host + 1)
    t0 = time.perf_counter()
    for i in range(n_hosts * per_host):
        store.reserve(session(f"fill{i}"), actor="bench")
    fill = time.perf_counter() - t0
    out.append(f"filled {n_hosts} hosts x {per_host} sessions = {n_hosts * per_host} live in {fill:.1f} s "
               f"({n_hosts * per_host / fill:.0f} launches/s, placement included)")
    # Room on the last host only: each launch's placement reads every host; each launch is ended after.
    store.register_host(f"h{n_hosts - 1:03d}", cpus=per_host + 1, mem_bytes=(per_host + 1) * GIB,
                        max_sessions=per_host + 1)
    times = []
    for i in range(samples):
        s = session(f"probe{i}")
        t = time.perf_counter()
        placed, _ = store.launch(s, actor="bench")
        times.append(time.perf_counter() - t)
        assert placed.status == SessionStatus.QUEUED, placed.status
        end(store, placed)
    out.append(line(f"launch step at {n_hosts} hosts x {per_host} sessions (placement scans every host)", times))
    # Queue throughput: `queue` launches wait (no room), then every host gets room for all of them at once.
    store.register_host(f"h{n_hosts - 1:03d}", cpus=per_host, mem_bytes=per_host * GIB, max_sessions=per_host + 1)
    waiting = [store.launch(session(f"q{i}"), actor="bench")[0] for i in range(queue)]
    assert all(w.status == SessionStatus.WAITING for w in waiting)
    for h in range(n_hosts):
        extra = queue // n_hosts + 1
        store.register_host(f"h{h:03d}", cpus=per_host + extra, mem_bytes=(per_host + extra) * GIB,
                            max_sessions=per_host + extra)
    t = time.perf_counter()
    admitted = store.admit()
    took = time.perf_counter() - t
    assert [a.id for a in admitted] == [w.id for w in waiting]
    out.append(f"queue throughput: {len(admitted)} waiting launches admitted in arrival order in one step, "
               f"{took * 1000:.0f} ms ({len(admitted) / took:.0f} admissions/s)")
    # Store-side admission latency: every host full again, one launch waiting; a session ends; admit.
    for h in range(n_hosts):
        store.register_host(f"h{h:03d}", cpus=per_host, mem_bytes=per_host * GIB, max_sessions=per_host + 1)
    for a in admitted:
        end(store, a)
    latencies = []
    victims = [s for s in store.list_live() if s.status == SessionStatus.QUEUED][:samples]
    for i, victim in enumerate(victims):
        w, _ = store.launch(session(f"lat{i}"), actor="bench")
        assert w.status == SessionStatus.WAITING
        t = time.perf_counter()
        end(store, victim)
        got = store.admit()
        latencies.append(time.perf_counter() - t)
        assert [g.id for g in got] == [w.id]
    out.append(line("room freed -> head of the queue admitted (the end transition + one admission step)", latencies))
    keys = list(store.redis.scan_iter(match=f"{settings.instance}:*", count=5000))
    for i in range(0, len(keys), 1000):
        store.redis.delete(*keys[i : i + 1000])
    return out


def e2e(redis_url: str, rounds: int, work: Path) -> list[str]:
    st = start_stack(work / "e2e", redis_url, docker_client(), max_sessions=2, max_sessions_per_host=2)
    admin = Actor(name="bench-admin", role=Role.ADMIN)
    to_admitted, to_running = [], []
    try:
        users = iter(f"e2e{i}" for i in range(10**6))

        def run(user: str) -> Session:
            s = st.service.launch(Actor(name=user, role=Role.RESEARCHER), "alpha_research")
            return st.service.wait(admin, s.id, {SessionStatus.RUNNING}, 120)

        live = [run(next(users)), run(next(users))]
        for _ in range(rounds):
            waiting = st.service.launch(Actor(name=next(users), role=Role.RESEARCHER), "alpha_research")
            assert waiting.status == SessionStatus.WAITING
            t = time.perf_counter()
            st.service.stop(admin, session_id=live[0].id)
            st.service.wait(admin, waiting.id, {SessionStatus.QUEUED, SessionStatus.STARTING, SessionStatus.RUNNING},
                            60, poll=0.005)
            to_admitted.append(time.perf_counter() - t)
            running = st.service.wait(admin, waiting.id, {SessionStatus.RUNNING}, 120)
            to_running.append(time.perf_counter() - t)
            live = [live[1], running]
        return [
            line("end to end: stop requested -> waiting launch admitted (worker stops, then admits)", to_admitted),
            line("end to end: stop requested -> waiting launch running", to_running),
        ]
    finally:
        st.stop_everything()
        st.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--per-host", type=int, default=200)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--queue", type=int, default=1000)
    p.add_argument("--e2e", type=int, default=0, help="rounds of the end-to-end measurement (0: skip)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbl-bench-admission-") as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        proc, redis_url = start_redis(work / "redis")
        try:
            for text in scale(redis_url, args.hosts, args.per_host, args.samples, args.queue):
                print(text, flush=True)
            if args.e2e:
                for text in e2e(redis_url, args.e2e, work):
                    print(text, flush=True)
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
