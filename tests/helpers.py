"""Test helpers: free ports, waiting, subprocesses we own, and a Jupyter kernel client."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import websocket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """A child process this test session started; stopped by its own PID (and its group)."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if not self.alive():
            return
        os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    return Proc(name, popen, log)


@dataclass
class ExecResult:
    stdout: str = ""
    result: str | None = None
    error: str | None = None
    kernel_died: bool = False
    status: str = ""
    messages: list[dict] = field(default_factory=list)


def origin_websocket(client: Any, path: str, *, timeout: float) -> websocket.WebSocket:
    """A WebSocket to ``path`` of a session, through the entry point, as the browser of ``client`` (a
    ``tests.web.OriginClient`` that went through the open flow) opens it: its origin, host and cookies."""
    return websocket.create_connection(
        f"ws://{client.base.split('://', 1)[1]}{path}",
        host=client.host,
        origin=client.origin,
        cookie=client.cookie_header(),
        timeout=timeout,
    )


class Kernel:
    """A kernel in a running session, driven through the entry point (HTTP + WebSocket) by a
    browser-like client that went through the open flow (``tests.web.OriginClient``)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        r = client.post("/api/kernels", json={"name": "python3"})
        r.raise_for_status()
        self.id = r.json()["id"]
        self.ws = origin_websocket(client, f"/api/kernels/{self.id}/channels", timeout=60)
        self.session = uuid.uuid4().hex

    def execute(self, code: str, timeout: float = 60) -> ExecResult:
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": "test",
                        "session": self.session,
                        "msg_type": "execute_request",
                        "version": "5.3",
                        "date": datetime.now(UTC).isoformat(),
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        res = ExecResult()
        idle = replied = False
        deadline = time.monotonic() + timeout
        while not (idle and replied):
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                raw = self.ws.recv()
            except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
                if time.monotonic() >= deadline:
                    raise AssertionError(f"no reply within {timeout} s to {code[:60]!r}") from None
                res.kernel_died = True
                return res
            msg = json.loads(raw)
            res.messages.append(msg)
            mtype = msg.get("msg_type") or msg["header"]["msg_type"]
            content = msg.get("content", {})
            if mtype == "status" and content.get("execution_state") in ("restarting", "dead"):
                res.kernel_died = True
                return res
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if mtype == "stream" and content.get("name") == "stdout":
                res.stdout += content["text"]
            elif mtype == "execute_result":
                res.result = content["data"].get("text/plain")
            elif mtype == "error":
                res.error = f"{content['ename']}: {content['evalue']}"
            elif mtype == "status" and content.get("execution_state") == "idle":
                idle = True
            elif mtype == "execute_reply":
                replied = True
                res.status = content.get("status", "")
        return res

    def close(self) -> None:
        self.ws.close()
        self.client.request("DELETE", f"/api/kernels/{self.id}")


class Terminal:
    """A JupyterLab terminal in a running session, driven through the entry point (terminado's WebSocket protocol)
    by a browser-like client that went through the open flow."""

    def __init__(self, client: Any) -> None:
        self.client = client
        r = client.post("/api/terminals")
        r.raise_for_status()
        self.name = r.json()["name"]
        self.ws = origin_websocket(client, f"/terminals/websocket/{self.name}", timeout=30)

    def run(self, line: str, until: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """Type ``line`` and read the terminal until ``until`` matches what it printed (not the echo of ``line``)."""
        self.ws.send(json.dumps(["stdin", line + "\r"]))
        out, deadline = "", time.monotonic() + timeout
        while time.monotonic() < deadline:
            kind, *rest = json.loads(self.ws.recv())
            if kind == "stdout":
                out += rest[0]
                if found := until.search(out):
                    return found
        raise AssertionError(f"the terminal did not print {until.pattern!r} within {timeout} s: {out[-500:]!r}")

    def close(self) -> None:
        self.ws.close()
        self.client.request("DELETE", f"/api/terminals/{self.name}")


BARE_SECRET = "b" * 43  # what a bare server (below) trusts from its client


def start_bare_server(
    client: Any,
    image: str,
    folder: Path,
    *,
    environment: dict[str, str] | None = None,
    volumes: dict[str, dict[str, str]] | None = None,
    label: str,
) -> tuple[Any, Path]:
    """The notebook image's Jupyter server with a session's command and options (no network, the notebook user,
    read-only, its socket and secret folders made under ``folder``) and no launcher around it: (container, the
    path its socket will have). It trusts ``BARE_SECRET``; ``label`` marks it as ``io.nblauncher.test``'s value."""
    from launcher.spec import AUTH_FILE, JUPYTER_SOCKET, SECRET_DIR, SOCKET_DIR, jupyter_command

    folder.chmod(0o755)
    sock, secret = folder / "sock", folder / "secret"
    sock.mkdir()
    sock.chmod(0o777)  # the notebook user makes its socket here
    secret.mkdir()
    (secret / "auth").write_text(BARE_SECRET)
    container = client.containers.run(
        image,
        jupyter_command(),
        detach=True,
        user="1000:1000",
        network_mode="none",
        read_only=True,
        environment={"HOME": "/home/jovyan", "JUPYTER_RUNTIME_DIR": "/tmp/rt", "NBL_AUTH_FILE": AUTH_FILE}
        | (environment or {}),
        volumes={str(sock): {"bind": SOCKET_DIR, "mode": "rw"}, str(secret): {"bind": SECRET_DIR, "mode": "ro"}}
        | (volumes or {}),
        tmpfs={"/tmp": "rw,size=64m", "/home/jovyan": "rw,uid=1000,gid=1000,mode=0700"},
        labels={"io.nblauncher.test": label},
    )
    return container, sock / Path(JUPYTER_SOCKET).name


class RecordingDispatcher:
    """A real dispatcher object that records what would be enqueued (for service-only tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def start(self, session):
        self.sent.append(("start", session.id, session.host))

    def stop(self, session):
        self.sent.append(("stop", session.id))

    def discard(self, session):
        self.sent.append(("discard", session.id))


LOOPBACK = re.compile(r"^(http|ws)://(127\.0\.0\.1|[a-z0-9.-]+\.localhost)[:/]")


def new_context(browser):
    """A browser context whose requests to anything but 127.0.0.1 and *.localhost are aborted."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.route(lambda url: not LOOPBACK.match(url), lambda route: route.abort())
    return context


def bring_to(store, session_id: str, status, url: str = "http://placeholder.nb.localhost") -> Any:
    """Move a reserved session to ``status`` through the state machine's own commands (test set-up)."""
    from launcher.models import Reason, SessionStatus
    from launcher.transitions import ActorKind, By, MarkRunning, MarkStarting, MarkStopped, RequestStop

    by = By(ActorKind.WORKER, "test")
    session = store.get(session_id)
    path = [SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.STOPPING, SessionStatus.STOPPED]
    commands = {
        SessionStatus.STARTING: MarkStarting(by=by, reason=Reason.START),
        SessionStatus.RUNNING: MarkRunning(by=by, reason=Reason.READY, url=url),
        SessionStatus.STOPPING: RequestStop(by=by, reason=Reason.USER),
        SessionStatus.STOPPED: MarkStopped(by=by, reason=Reason.USER),
    }
    for step in path[: path.index(status) + 1]:
        if session.status != step:
            session = store.apply(session_id, commands[step])
    return session


def register_hosts(store: Any, *names: str, cpus: float = 64.0, mem_gib: float = 256.0,
                   max_sessions: int | None = None) -> None:
    """Announce hosts as their workers would (fast tests run no worker): room enough that only the caps bind."""
    for name in names:
        store.register_host(name, cpus=cpus, mem_bytes=int(mem_gib * 2**30), max_sessions=max_sessions)
