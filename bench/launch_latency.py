"""Benchmark: click-to-ready latency, concurrent launches, stop latency, idle session memory; cold and warm.

    python bench/launch_latency.py [--launches 20] [--concurrent 5,10] [--pool 2] [--modes cold-image,cold,warm]

"cold" runs with no warm pool; "warm" with a pool of ``--pool`` standard containers (the product's default is 2),
both with the image's Python packages bound from a host copy as the product does (``workers/pyprefix.py``, copied
once per run before measuring); "cold-image" with no pool and the packages read from the image's own layers.
"warm" waits before each sequential launch until the pool is full again (a person's pace), and measures the memory of
an idle pool container too.

Starts its own real stack (Redis, nginx entry point, Celery worker, notebook containers on the
local Docker engine), measures, prints the figures and writes bench/results/launch-<mode>.json.
"Ready" means Jupyter answers /api/status *through the entry point* for a browser-like client that
went through the open flow (state cookie, one-time code, the origin's cookie): the moment a person
clicking Open would get JupyterLab.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.models import Actor, SessionStatus  # noqa: E402
from tests.helpers import wait_for  # noqa: E402
from tests.stack import docker_client, start_redis, start_stack  # noqa: E402
from tests.web import opened  # noqa: E402
from workers import pool as pool_mod  # noqa: E402
from workers.lifecycle import WorkerContext  # noqa: E402

OPERATOR = Actor.operator("bench")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def launch_until_ready(stack, user: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    session = stack.service.launch(stack.actor(user), "alpha_research")
    while True:
        current = stack.store.get(session.id)
        if current.status == SessionStatus.ERROR:
            raise SystemExit(f"launch failed: {current.error}")
        if current.status == SessionStatus.RUNNING:
            client = opened(stack, session.id, user)
            try:
                if client.get("/api/status").status_code == 200:
                    return time.perf_counter() - t0, session.id
            finally:
                client.close()
        time.sleep(0.01)


def stop_and_time(stack, user: str, sid: str) -> float:
    t0 = time.perf_counter()
    stack.service.stop(OPERATOR, user)
    stack.service.wait(OPERATOR, sid, {SessionStatus.STOPPED}, 60, poll=0.005)
    return time.perf_counter() - t0


def container_memory(stack, sid: str) -> dict[str, float]:
    """RSS and PSS (MiB) summed over the container's processes, and the cgroup's usage less cache."""
    from launcher.spec import container_name

    container = stack.docker.containers.get(container_name(stack.settings, sid))  # claimed pool ones too
    pids = [int(row[1]) for row in container.top(ps_args="-eo user,pid")["Processes"]]
    rss = pss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    cgroup = stack.runtime.stats_memory(container.name) or 0
    return {"processes": len(pids), "rss_mib": rss / 1024, "pss_mib": pss / 1024, "cgroup_mib": cgroup / 2**20}


def pool_idle(stack) -> list[str]:
    return [s for s, r in stack.store.pool_slots(stack.settings.host_name).items() if r.get("state") == "idle"]


def wait_pool(stack, size: int) -> None:
    deadline = time.monotonic() + 120
    while len(pool_idle(stack)) < size:
        if time.monotonic() > deadline:
            raise SystemExit("the warm pool did not fill within 120 s")
        time.sleep(0.05)


def pool_memory(stack) -> dict[str, float]:
    from workers.pool import pool_container_name

    [slot, *_] = pool_idle(stack)
    container = stack.docker.containers.get(pool_container_name(stack.settings, slot))
    pids = [int(row[1]) for row in container.top(ps_args="-eo user,pid")["Processes"]]
    pss = sum(
        int(line.split()[1])
        for pid in pids
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if line.startswith("Pss:")
    )
    return {"processes": len(pids), "pss_mib": pss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--launches", type=int, default=20)
    ap.add_argument("--concurrent", default="5,10", help="launches at once, per batch (comma-separated)")
    ap.add_argument("--pool", type=int, default=2)
    ap.add_argument("--modes", default="cold-image,cold,warm")
    args = ap.parse_args()
    prefix = Path(tempfile.mkdtemp(prefix="nbl-bench-prefix-", dir="/tmp"))  # one copy for every mode of this run
    prefix.chmod(0o755)
    try:
        for mode in args.modes.split(","):
            print(f"== {mode} ==", flush=True)
            run(args, pool=args.pool if mode == "warm" else 0, prefix=None if mode == "cold-image" else prefix)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def at_once(stack: Any, n: int, pool: int) -> dict[str, float]:
    """``n`` launches at the same moment (the pool full first), until every one is ready; then all are stopped."""
    per_session: list[float] = []
    ids: dict[str, str] = {}

    def one(i: int) -> None:
        latency, sid = launch_until_ready(stack, f"conc{n}-{i}")
        per_session.append(latency)
        ids[f"conc{n}-{i}"] = sid

    if pool:
        wait_pool(stack, pool)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for user, sid in ids.items():
        stop_and_time(stack, user, sid)
    if len(per_session) != n:
        raise SystemExit(f"{n - len(per_session)} of {n} launches at once did not become ready")
    return {"n": n, "wall_until_all_ready_s": wall, "slowest_s": max(per_session), "fastest_s": min(per_session)}


def run(args: argparse.Namespace, pool: int, prefix: Path | None) -> None:
    batches = [int(x) for x in str(args.concurrent).split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="nbl-bench-", dir="/tmp"))
    work.chmod(0o755)
    redis_proc, redis_url = start_redis(work)
    sizes = {"standard": pool} if pool else {}
    # The product's stop grace (LAUNCHER_STOP_TIMEOUT_S, 0: killed at once), not the test stacks' 2 s. Room for the
    # largest batch at once: this measures launching, not admission (the product's defaults would queue past 5), and
    # 1 GiB per session so that 10 at once and the pool fit this machine's memory (a limit, not a use).
    room = max([*batches, 5]) + pool
    stack = start_stack(
        work / "stack",
        redis_url,
        docker_client(),
        mem_limit="1g",
        cpus=2.0,
        pool_sizes=sizes,
        stop_timeout_s=0,
        python_prefix_bind=prefix is not None,
        python_prefix_dir=prefix or work / "python-prefix",
        max_sessions=room,
        max_sessions_per_host=room,
        host_cpu_overcommit=float(2 * room),
    )
    results: dict[str, object] = {}
    try:
        ready, stops = [], []
        if prefix is not None:  # the worker copies at its start; measure what the product runs once it is done
            wait_for(lambda: any(prefix.glob("[0-9a-f]*/")), 600, "the copy of the image's packages")
        if pool:
            wait_pool(stack, pool)
            time.sleep(3)
            results["pool_container_memory"] = pool_memory(stack)
        for i in range(args.launches):
            if pool:
                wait_pool(stack, pool)
            latency, sid = launch_until_ready(stack, f"bench-{i}")
            ready.append(latency)
            if i == args.launches - 1:
                time.sleep(5)  # let the idle server settle before measuring memory
                results["idle_memory"] = container_memory(stack, sid)
            stops.append(stop_and_time(stack, f"bench-{i}", sid))
        results["click_to_ready_s"] = {
            "n": len(ready),
            "p50": statistics.median(ready),
            "p95": pct(ready, 95),
            "min": min(ready),
            "max": max(ready),
        }
        results["stop_s"] = {"n": len(stops), "p50": statistics.median(stops), "p95": pct(stops, 95)}

        results["concurrent"] = {}
        for n in batches:
            results["concurrent"][str(n)] = at_once(stack, n, pool)
    finally:
        stack.stop_everything()
        stack.worker.stop()  # its pool keeper first: nothing boots while the pool is taken down
        for slot in list(stack.store.pool_slots(stack.settings.host_name)):
            pool_mod.destroy(WorkerContext(stack.settings, stack.store, stack.runtime), slot)
        stack.shutdown()
        redis_proc.stop()
    r = results
    print(
        f"click-to-ready over {r['click_to_ready_s']['n']} sequential launches: "
        f"p50 {r['click_to_ready_s']['p50']:.3f} s, p95 {r['click_to_ready_s']['p95']:.3f} s "
        f"(min {r['click_to_ready_s']['min']:.3f}, max {r['click_to_ready_s']['max']:.3f})"
    )
    for batch in r["concurrent"].values():
        print(
            f"{batch['n']} concurrent launches: all ready after {batch['wall_until_all_ready_s']:.3f} s "
            f"(fastest {batch['fastest_s']:.3f} s)"
        )
    print(f"stop latency: p50 {r['stop_s']['p50']:.3f} s, p95 {r['stop_s']['p95']:.3f} s")
    m = r["idle_memory"]
    print(
        f"idle session memory: PSS {m['pss_mib']:.1f} MiB, RSS {m['rss_mib']:.1f} MiB, "
        f"cgroup {m['cgroup_mib']:.1f} MiB over {m['processes']} processes"
    )
    if "pool_container_memory" in r:
        pm = r["pool_container_memory"]
        print(f"idle pool container: PSS {pm['pss_mib']:.1f} MiB over {pm['processes']} processes")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    mode = "warm" if pool else "cold" if prefix is not None else "cold-image"
    (out / f"launch-{mode}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
