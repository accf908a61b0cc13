"""Fault injection for tests/test_faults.py: a Docker socket relay to cut, hold and restore, a Redis to restart
from its append-only file, a frozen Jupyter server, and the invariants every fault must leave true.

``DockerRelay`` sits between a worker (``DOCKER_HOST=unix://<relay socket>``) and the real engine. It reads
each HTTP request head on a connection (docker-py sends one request at a time per connection), so it can hold a
request whose method and path match until the test releases it, and it pipes everything else both ways.
``cut()`` closes the listening socket (new connections are refused, as when the engine is down) and drops every
open connection, held ones included; ``restore()`` listens again. The test's own checks use the real socket.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import docker
import redis

from launcher.models import LIVE_STATUSES, Session, SessionStatus
from launcher.spec import LABEL_PREFIX, container_name
from tests.helpers import Proc, spawn, wait_for
from workers import quota

DOCKER_SOCKET = "/var/run/docker.sock"
_VERSION_PREFIX = re.compile(r"^/v[0-9]+\.[0-9]+(?=/)")
_MAX_HEAD = 64 * 1024


@dataclass
class Hold:
    """Requests matching ``method`` and ``path`` (a regex searched in the path without its ``/v1.xx`` prefix) wait
    here until released; at most ``limit`` of them (None: every one), later ones pass."""

    method: str
    path: re.Pattern[str]
    limit: int | None = 1
    hits: list[str] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def takes(self, method: str, path: str) -> bool:
        full = self.limit is not None and len(self.hits) >= self.limit
        return not full and method == self.method and self.path.search(path) is not None

    def wait(self, timeout: float) -> str:
        """Until a request is held here; returns its request line."""
        assert self.arrived.wait(timeout), f"no {self.method} {self.path.pattern} reached the relay in {timeout} s"
        return self.hits[0]


class _Connection:
    """One client connection and its upstream: requests parsed client to engine, answers piped back."""

    def __init__(self, relay: DockerRelay, client: socket.socket) -> None:
        self.relay = relay
        self.client = client
        self.upstream: socket.socket | None = None
        self.dead = threading.Event()
        self._dropping = threading.Lock()

    def drop(self) -> None:
        with self._dropping:
            if self.dead.is_set():
                return
            self.dead.set()
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.relay._forget(self)

    def client_gone(self) -> bool:
        """True when the client closed its end (a killed worker): peeks, never consumes."""
        try:
            readable, _, _ = select.select([self.client], [], [], 0)
            return bool(readable) and self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (OSError, ValueError):
            return True

    def run(self) -> None:
        try:
            self.upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.upstream.connect(self.relay.upstream)
            threading.Thread(target=self._answers, daemon=True, name="relay-answers").start()
            self._requests()
        except OSError:
            pass
        finally:
            self.drop()

    def _answers(self) -> None:
        try:
            while not self.dead.is_set():
                assert self.upstream is not None
                data = self.upstream.recv(65536)
                if not data:
                    return
                self.client.sendall(data)
        except OSError:
            return
        finally:
            self.drop()

    def _requests(self) -> None:
        buf = b""
        while not self.dead.is_set():
            while b"\r\n\r\n" not in buf:
                data = self.client.recv(65536)
                if not data or len(buf) > _MAX_HEAD:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            path = _VERSION_PREFIX.sub("", target)
            if not self.relay._admit(self, method, path):
                return
            assert self.upstream is not None
            self.upstream.sendall(head + b"\r\n\r\n")
            if "chunked" in headers.get("transfer-encoding", "") or "upgrade" in headers.get("connection", "").lower():
                self._pipe_rest(buf)  # not docker-py's requests here; pass it through as it is
                return
            length = int(headers.get("content-length", "0") or 0)
            body, buf = buf[:length], buf[length:]
            self.upstream.sendall(body)
            length -= len(body)
            while length > 0:
                data = self.client.recv(min(65536, length))
                if not data:
                    return
                self.upstream.sendall(data)
                length -= len(data)

    def _pipe_rest(self, buf: bytes) -> None:
        assert self.upstream is not None
        self.upstream.sendall(buf)
        while data := self.client.recv(65536):
            self.upstream.sendall(data)


class DockerRelay:
    """A UNIX socket relay to the Docker engine that the test can cut, hold and restore (see the module doc)."""

    def __init__(self, path: Path, upstream: str = DOCKER_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self.log: deque[tuple[float, str, str]] = deque(maxlen=2000)  # (monotonic, "METHOD path", what happened)
        self._lock = threading.Lock()
        self._conns: set[_Connection] = set()
        self._holds: list[Hold] = []
        self._listener: socket.socket | None = None
        self.cut_at: float | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> DockerRelay:
        self._listen()
        return self

    def _listen(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(128)
        listener.settimeout(0.2)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="relay-accept").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    break
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            conn = _Connection(self, client)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=conn.run, daemon=True, name="relay-conn").start()
        listener.close()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _admit(self, conn: _Connection, method: str, path: str) -> bool:
        """Whether to forward this request now; a held one waits for its release (False: dropped meanwhile)."""
        line = f"{method} {path}"
        with self._lock:
            hold = next((h for h in self._holds if h.takes(method, path)), None)
            if hold is not None:
                hold.hits.append(line)
        if hold is None:
            self.log.append((time.monotonic(), line, "passed"))
            return True
        self.log.append((time.monotonic(), line, "held"))
        hold.arrived.set()
        while not hold.released.wait(0.05):
            if conn.dead.is_set() or conn.client_gone():
                self.log.append((time.monotonic(), line, "dropped while held"))
                return False
        if conn.dead.is_set() or conn.client_gone():
            return False
        self.log.append((time.monotonic(), line, "released"))
        return True

    # -- what the tests call -------------------------------------------------------------------------------
    def hold(self, method: str, path: str, limit: int | None = 1) -> Hold:
        hold = Hold(method, re.compile(path), limit)
        with self._lock:
            self._holds.append(hold)
        return hold

    def release(self, hold: Hold) -> None:
        with self._lock:
            if hold in self._holds:
                self._holds.remove(hold)
        hold.released.set()

    def clear(self) -> None:
        """Release every hold and arm no other."""
        with self._lock:
            holds, self._holds = self._holds, []
        for hold in holds:
            hold.released.set()

    def cut(self) -> None:
        """The engine becomes unreachable: new connections are refused, open ones (held ones too) dropped."""
        with self._lock:
            self._listener = None  # the accept loop closes it; the socket file stays: connect() is refused
        self.cut_at = time.monotonic()
        wait_for(lambda: _refused(self.path), 5, "the relay to refuse connections")
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.drop()

    def restore(self) -> None:
        self._listen()
        self.cut_at = None

    def seen(self, method: str, path: str, since: float = 0.0) -> list[str]:
        """Request lines matching that went through (or were held) since ``since`` (monotonic)."""
        pattern = re.compile(path)
        went = [(t, line) for t, line, what in list(self.log) if what in ("passed", "released") and t >= since]
        return [line for _, line in went if line.startswith(method + " ") and pattern.search(line.split(" ", 1)[1])]

    def close(self) -> None:
        self.clear()
        with self._lock:
            self._listener = None
            conns = list(self._conns)
        for conn in conns:
            conn.drop()
        time.sleep(0.3)
        self.path.unlink(missing_ok=True)


def _refused(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return True
    finally:
        probe.close()
    return False


# -- Redis with an append-only file, restarted in place ----------------------------------------------------


class RestartableRedis:
    """Our own redis-server (password, AOF fsynced on every write) that a test stops and starts on the same port."""

    def __init__(self, folder: Path, proc: Proc, url: str) -> None:
        self.folder = folder
        self.proc = proc
        self.url = url
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        """SIGTERM: Redis writes what it has and exits (the AOF is fsynced on every write anyway)."""
        self.proc.stop()
        assert not self.proc.alive()

    def start(self) -> None:
        conf = self.folder / f"redis-{self.port}.conf"
        self.proc = spawn("redis", ["redis-server", str(conf)], self.folder / f"redis-{self.port}.out")
        client = self.client()

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:  # refused while down, LOADING while it reads the AOF back
                return not self.proc.alive()

        try:
            wait_for(answers, 30, "redis-server to come back")
        finally:
            client.close()
        assert self.proc.alive(), (self.folder / f"redis-{self.port}.log").read_text(errors="replace")[-2000:]


# -- a frozen Jupyter server ----------------------------------------------------------------------------------


def jupyter_server_pid(client: docker.DockerClient, name: str) -> int:
    """The host PID of the notebook's Jupyter server (the process whose command starts ``python3 -m jupyterlab``)."""
    top = client.containers.get(name).top()
    procs = [dict(zip(top["Titles"], p, strict=False)) for p in top["Processes"]]
    [server] = [p for p in procs if p["CMD"].startswith("python3 -m jupyterlab")]
    return int(server["PID"])


def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


# -- what every fault must leave true ------------------------------------------------------------------------

ENDED = {SessionStatus.STOPPED, SessionStatus.ERROR}
_NOT_FOR_PEOPLE = re.compile(r"Traceback|Error\(|Exception\(|<class |docker unreachable:|redis error:|broker error:")


def readable(text: str | None) -> bool:
    """A sentence a person can act on: several words, no traceback, no exception repr, no log-only detail."""
    return bool(text) and len(str(text).split()) >= 4 and not _NOT_FOR_PEOPLE.search(str(text))


def trail(store, session_id: str) -> list[tuple[str, str, str, str]]:  # noqa: ANN001 - a SessionStore
    """The session's audit entries, oldest first: (action, previous, actor, reason). The provenance record's entry
    (what the session runs on, written while it starts) is left out: these trails tell the state changes."""
    events = [e for e in store.audit(limit=2000) if e.session_id == session_id and e.action != "provenance"]
    return [(e.action, e.previous, e.actor, e.reason) for e in reversed(events)]


def actions(store, session_id: str) -> list[str]:  # noqa: ANN001
    return [a for a, *_ in trail(store, session_id)]


def settled(session: Session | None, containers: list) -> bool:
    """Running in exactly one running container (the one recorded), or ended."""
    if session is None:
        return False
    if session.status in ENDED:
        return True
    if session.status != SessionStatus.RUNNING:
        return False
    return len(containers) == 1 and containers[0].status == "running" and containers[0].id == session.container_id


def problems(stack) -> list[str]:  # noqa: ANN001 - a tests.stack.Stack
    """Everything wrong with the stack's state right now ([] when consistent):

    - each id in ``<instance>:live`` is a live record, in its user's live set; a waiting one is in the queue and on no
      host, any other is placed on a host and in that host's set;
    - each host set, the queue and each user's live set point at live sessions; what each host has reserved is what
      its live sessions reserve;
    - each labelled container belongs to a live session (no orphan), a running session has exactly one container,
      running, and it is the one recorded;
    - no session folder and no mounted workspace image is left without a live session;
    - each ended session of the recent list has a reason, and an error one a message a person can read.
    """
    st, r, p = stack.store, stack.store.redis, f"{stack.settings.instance}:"
    found: list[str] = []
    live_ids = r.smembers(f"{p}live")
    live = {sid: s for sid in live_ids if (s := st.get(sid)) is not None}
    for sid in live_ids:
        s = live.get(sid)
        if s is None or s.status not in LIVE_STATUSES:
            found.append(f"{sid} in live but {s.status.value if s else 'missing'}")
            continue
        if s.status == SessionStatus.WAITING:
            if r.zscore(f"{p}queue", sid) is None or s.host is not None:
                found.append(f"{sid} waiting but not in the queue (or placed on {s.host})")
        elif s.host is None or sid not in r.smembers(f"{p}host:{s.host}:live"):
            found.append(f"{sid} holds no seat on its host {s.host}")
        if sid not in r.smembers(f"{p}user:{s.user}:live"):
            found.append(f"{sid} is not among the live sessions of {s.user}")
    for key in r.scan_iter(f"{p}host:*:live"):
        for sid in r.smembers(key) - set(live):
            found.append(f"seat leaked: {sid} in {key}")
        host = key[len(f"{p}host:") : -len(":live")]
        mine = [live[sid] for sid in r.smembers(key) if sid in live]
        used = r.hmget(f"{p}host:{host}", "used_mcpu", "used_mem")
        if [int(used[0] or 0), int(used[1] or 0)] != [sum(x.millicpus for x in mine), sum(x.mem_bytes for x in mine)]:
            found.append(f"reservations of {host} are {used}, its sessions reserve {len(mine)}")
    for sid in r.zrange(f"{p}queue", 0, -1):
        if sid not in live or live[sid].status != SessionStatus.WAITING:
            found.append(f"queue leaked: {sid}")
    for key in r.scan_iter(f"{p}user:*:live"):
        for sid in r.smembers(key):
            if sid not in live or f"{p}user:{live[sid].user}:live" != key:
                found.append(f"user set leaked: {key} -> {sid}")
    by_session: dict[str, list] = {}
    for c in stack.containers():
        by_session.setdefault(c.labels.get(f"{LABEL_PREFIX}.session", ""), []).append(c)
    for sid, cs in by_session.items():
        if sid not in live:
            found.append(f"orphan container(s) {[c.name for c in cs]} of {sid or 'no session'}")
    for s in live.values():
        if s.status == SessionStatus.RUNNING:
            cs = by_session.get(s.id, [])
            if not settled(s, cs):
                found.append(f"{s.id} ({s.user}) running but containers are {[(c.name, c.status) for c in cs]}")
    for leftover in sorted({d.name for d in stack.settings.sessions_dir.iterdir()} - set(live)):
        found.append(f"session folder left behind: {leftover}")
    busy_users = {s.user for s in live.values()}
    for user in sorted(set(quota.mounted_users(stack.settings)) - busy_users):
        found.append(f"workspace image of {user} still mounted with nothing live")
    for s in st.list_recent(limit=500):
        if s.status in ENDED and s.stop_reason is None:
            found.append(f"{s.id} ({s.user}) ended with no reason")
        if s.status == SessionStatus.ERROR and not readable(s.error):
            found.append(f"{s.id} ({s.user}) ended in error without a readable message: {s.error!r}")
    return found


def wait_consistent(stack, timeout: float, what: str = "the stack to be consistent") -> float:  # noqa: ANN001
    """Until ``problems`` is empty (orphans are removed by the next reconcile); returns the seconds it took."""
    t0 = time.monotonic()
    last: list[str] = []

    def ok() -> bool:
        nonlocal last
        last = problems(stack)
        return not last

    try:
        wait_for(ok, timeout, what, interval=0.5)
    except AssertionError:
        raise AssertionError(f"{what}: still wrong after {timeout} s: {last}") from None
    return time.monotonic() - t0


def container_of(stack, session_id: str):  # noqa: ANN001, ANN201
    """The session's container through the real engine, or None."""
    try:
        return stack.docker.containers.get(container_name(stack.settings, session_id))
    except docker.errors.NotFound:
        return None
