"""Benchmark: what the entry point's authorization costs per request, and how fast a logout bites.

    python bench/entrypoint_overhead.py [--requests 3000]

Starts its own Redis and two real entry points (nginx + authorizer) on loopback, in front of the
same stand-in notebook (a minimal HTTP server on the session's UNIX socket, so Jupyter's own time
is not in the figures):

- ``baseline``: the entry point as it was before per-request authorization (the rendered nginx
  configuration with the ``auth_request`` lines removed);
- ``auth``: the product's entry point, the authorizer's decision cached for ``entry_cache_s``;
- ``auth, no cache``: every request asks Redis (``entry_cache_s=0``).

One client, one keepalive connection, closed loop (each request waits for the previous answer),
like JupyterLab's burst of small requests. Then the revocation delay: a login is deleted from
Redis and the time until the first refused request is measured, repeatedly.
Prints the figures and writes bench/results/entrypoint.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.adapters.redis_store import SessionStore  # noqa: E402
from launcher.entrypoint import write_config  # noqa: E402
from launcher.models import Actor, Role, Session, SessionStatus, new_session_id, new_token  # noqa: E402
from launcher.settings import Settings  # noqa: E402
from tests.helpers import bring_to, free_port, register_hosts, spawn, wait_for  # noqa: E402
from tests.stack import random_instance, start_entrypoint, start_redis  # noqa: E402
from tests.web import OriginClient, make_login  # noqa: E402
from workers import hostfs  # noqa: E402

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def stand_in_notebook(path: Path) -> None:
    """A minimal keepalive HTTP server on a UNIX socket, in a thread of its own."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path=str(path))
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    wait_for(path.exists, 5, "the stand-in notebook")


def closed_loop(port: int, host: str, cookie: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host, "Cookie": cookie}
    latencies = []
    for i in range(n + 200):
        t0 = time.perf_counter()
        conn.request("GET", "/api/status", headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"request {i} answered {resp.status}")
        if i >= 200:  # warm-up excluded
            latencies.append(time.perf_counter() - t0)
    conn.close()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies]
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": pct(ms, 95),
        "p99_ms": pct(ms, 99),
        "req_per_s": len(ms) / (sum(ms) / 1000),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--revocations", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbl-bench-ep-", dir="/tmp"))
    work.chmod(0o755)
    redis_proc, redis_url = start_redis(work)
    procs = []
    results: dict[str, object] = {}
    try:
        base = Settings(instance=random_instance(), redis_url=redis_url, sessions_dir=work / "sessions")
        store = SessionStore.from_settings(base)
        register_hosts(store, base.host_name)
        session = store.reserve(
            Session(id=new_session_id(), user="bench", template="alpha_research", token=new_token()), actor="bench"
        )
        bring_to(store, session.id, SessionStatus.STARTING)
        hostfs.prepare_rundir(base, session.id, session.token.get_secret_value())
        sock = hostfs.socket_path(base, session.id)
        stand_in_notebook(sock)
        os.chown(sock, base.notebook_uid, base.proxy_gid)
        hostfs.lock_socket(base, session.id)
        bring_to(store, session.id, SessionStatus.RUNNING)

        def entry(name: str, cache_s: float, strip_auth: bool) -> tuple[Settings, int]:
            port = free_port()
            settings = base.model_copy(
                update={
                    "public_url": f"http://nb.localhost:{port}",
                    "entrypoint_listen": f"127.0.0.1:{port}",
                    "entry_cache_s": cache_s,
                }
            )
            if strip_auth:  # the entry point before per-request authorization: nginx alone
                conf = write_config(settings, work / name)
                text = "\n".join(line for line in conf.read_text().splitlines() if "auth_request" not in line).replace(
                    "proxy_set_header X-Nbl-Auth $nbl_token;", ""
                )
                conf.write_text(text)
                procs.append(spawn(name, ["nginx", "-c", str(conf), "-p", str(work / name)], work / f"{name}.out"))
                wait_for(lambda: _ok(port), 10, name)
            else:
                procs.append(start_entrypoint(settings, work / name))
            return settings, port

        login = make_login(store.redis, base, "bench")
        actor = Actor(name="bench", role=Role.RESEARCHER)
        for name, cache_s, strip in (("baseline", 0.5, True), ("auth", 0.5, False), ("auth_nocache", 0.0, False)):
            settings, port = entry(name, cache_s, strip)
            client = OriginClient(settings, session.id)
            if not strip:
                client.open(store.redis, login, actor)
            cookie = client.cookie_header()
            client.close()
            results[name] = summary(
                closed_loop(port, settings.session_origin(session.id).split("://")[1], cookie, args.requests)
            )
            print(f"{name:>13}: {json.dumps(results[name])}")
        base_p50 = results["baseline"]["p50_ms"]  # type: ignore[index]
        for name in ("auth", "auth_nocache"):
            results[f"{name}_added_p50_ms"] = results[name]["p50_ms"] - base_p50  # type: ignore[index]

        # Revocation: delete the login, then time until the first refusal (a request every 5 ms).
        settings, port = entry("revocation", 0.5, False)
        delays = []
        for _ in range(args.revocations):
            login_i = make_login(store.redis, base, "bench")
            client = OriginClient(settings, session.id)
            client.open(store.redis, login_i, actor)
            for _ in range(5):
                client.get("/api/status")  # warm the cache
            t0 = time.perf_counter()
            store.redis.delete(f"{base.instance}:login:{login_i}")
            while client.get("/api/status").status_code == 200:
                time.sleep(0.005)
            delays.append(time.perf_counter() - t0)
            client.close()
        results["revocation_s"] = {"n": len(delays), "p50": statistics.median(delays), "max": max(delays)}
        print(f"revocation: {json.dumps(results['revocation_s'])}")
        added = (results["auth_added_p50_ms"], results["auth_nocache_added_p50_ms"])
        print(f"added p50: auth +{added[0]:.3f} ms, no cache +{added[1]:.3f} ms")
    finally:
        for proc in procs:
            proc.stop()
        redis_proc.stop()
    out = Path(__file__).parent / "results" / "entrypoint.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def _ok(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
