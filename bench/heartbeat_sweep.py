"""Benchmark: one heartbeat sweep over N running sessions.

    python bench/heartbeat_sweep.py [--real 10] [--simulated 1000] [--hostile 10] [--rounds 5]

Real: N notebook containers on the local Docker engine, probed through their Jupyter sockets.
SIMULATED: N sessions in a real Redis whose "Jupyter" is bench/fake_jupyter.py (canned answers on
N UNIX sockets, in a separate process), with the in-memory container runtime. It measures the
sweep's own cost (parallel probes, Redis writes), not Jupyter's. With ``--hostile K`` it runs the
simulated sweep again with K of the N servers hostile (``--behaviour``, default ``slow-body``: a
100 kB body one byte every 1.9 s), to show that the sweep stays bounded.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.adapters.docker_runtime import DockerRuntime  # noqa: E402
from launcher.adapters.memory_runtime import FakeRuntime  # noqa: E402
from launcher.adapters.redis_store import SessionStore  # noqa: E402
from launcher.models import Session, SessionStatus, new_session_id, new_token  # noqa: E402
from launcher.settings import Settings  # noqa: E402
from launcher.spec import container_name  # noqa: E402
from tests.helpers import bring_to, register_hosts  # noqa: E402
from tests.stack import docker_client, random_instance, start_redis, start_stack  # noqa: E402
from workers import hostfs, lifecycle, sweeps  # noqa: E402


def time_sweeps(ctx: lifecycle.WorkerContext, rounds: int, expect: int, unreachable: int = 0) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        counts = sweeps.heartbeat(ctx)
        times.append(time.perf_counter() - t0)
        assert counts["updated"] == expect and counts["unreachable"] == unreachable, counts
    return times


def report(label: str, times: list[float]) -> str:
    p95 = statistics.quantiles(times, n=20, method="inclusive")[18] if len(times) > 1 else times[0]
    return (
        f"{label}: median {statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms over {len(times)} sweeps"
    )


def real(n: int, rounds: int, work: Path, redis_url: str) -> str:
    st = start_stack(
        work / "real", redis_url, docker_client(), max_sessions=n, max_sessions_per_host=n, mem_limit="512m"
    )
    try:
        sessions = []
        for i in range(n):
            sessions.append(st.service.launch(st.actor(f"hb-{i}"), "alpha_research"))
        for s in sessions:
            done = st.service.wait(st.actor(s.user), s.id, {SessionStatus.RUNNING}, 300)
            assert done.status == SessionStatus.RUNNING, done.error
        ctx = lifecycle.WorkerContext(st.settings, st.store, DockerRuntime(st.docker))
        return report(f"{n} real notebook containers", time_sweeps(ctx, rounds, n))
    finally:
        st.stop_everything()
        st.shutdown()


def simulated(n: int, rounds: int, work: Path, redis_url: str, hostile: int = 0, behaviour: str = "") -> str:
    settings = Settings(
        instance=random_instance(),
        redis_url=redis_url,
        host_name="sim",
        max_sessions=n,
        max_sessions_per_host=n,
        sessions_dir=work / f"sim-{n}-{hostile}",
    )
    store = SessionStore.from_settings(settings)
    register_hosts(store, "sim", max_sessions=n)
    runtime = FakeRuntime()
    lines = []
    for i in range(n):
        s = store.reserve(
            Session(id=new_session_id(), user=f"sim-{i}", template="alpha_research", token=new_token()), actor="bench"
        )
        bring_to(store, s.id, SessionStatus.RUNNING)
        runtime.start({"name": container_name(settings, s.id), "labels": {}})  # its container "runs"
        kind = behaviour if i < hostile else "idle"
        lines.append(f"{hostfs.socket_path(settings, s.id)} {s.token.get_secret_value()} {kind}\n")
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_jupyter.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server.stdin.write("".join(lines))
        server.stdin.close()
        assert server.stdout.readline().strip() == "ready"
        ctx = lifecycle.WorkerContext(settings, store, runtime)
        label = f"{n} SIMULATED sessions (stand-in Jupyter API)"
        if hostile:
            label += f", {hostile} of them {behaviour}"
        return report(label, time_sweeps(ctx, rounds, n - hostile, hostile))
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=int, default=10)
    ap.add_argument("--simulated", type=int, default=1000)
    ap.add_argument("--hostile", type=int, default=10, help="then again with this many hostile servers (0: skip)")
    ap.add_argument("--behaviour", default="slow-body", help="what the hostile servers do (bench/fake_jupyter.py)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbl-hb-", dir="/tmp"))
    work.chmod(0o755)
    redis_proc, redis_url = start_redis(work)
    try:
        lines = []
        if args.real:
            lines.append(real(args.real, args.rounds, work, redis_url))
        if args.simulated:
            lines.append(simulated(args.simulated, args.rounds, work, redis_url))
            if args.hostile:
                lines.append(simulated(args.simulated, args.rounds, work, redis_url, args.hostile, args.behaviour))
    finally:
        redis_proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
