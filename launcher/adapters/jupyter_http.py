"""A bounded HTTP client for a notebook's Jupyter server over its UNIX socket.

The server runs the notebook's code, so the worker does not trust anything it sends. Every call
has one overall deadline (connect, request, status line, headers and body together, not a timeout
per read), a body size cap, and accepts only a 200 answer whose body is JSON; callers check the
JSON's shape. Each session's server is at the root of its own origin (``/api/<name>``) and
authenticates the launcher by the ``X-Nbl-Auth`` header; ``Host`` is ``localhost``.

Errors: ``NoAnswer`` (an ``OSError``) when the server cannot be reached, does not finish its
answer before the deadline, or does not speak HTTP; ``BadAnswer`` (a ``ValueError``) when it
answers something unusable. Both are ``JupyterError``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.errors import StartFailed

PROBE_DEADLINE_S = 2.0  # one call, or one activity probe (three calls), from connect to the last body byte
MAX_BODY_BYTES = 1 << 20  # Jupyter's activity answers are a few KiB
AUTH_HEADER = "X-Nbl-Auth"
READY_POLL_S = 0.02
_READ_CHUNK = 64 * 1024


class JupyterError(Exception):
    """A notebook's server gave no usable answer."""


class NoAnswer(JupyterError, OSError):
    """Not reachable, not finished before the deadline, or not HTTP."""


class BadAnswer(JupyterError, ValueError):
    """An answer, but not a usable one: a status other than 200, too large, not JSON, the wrong shape."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _DeadlineSocket(socket.socket):
    """An AF_UNIX stream socket whose every blocking call waits at most until one monotonic instant.

    ``http.client`` reads through ``makefile()``, which calls ``recv_into`` here: each read gets the
    time left, not a fresh timeout, so a server sending one byte just inside a per-read timeout is
    still cut off at the deadline.
    """

    def __init__(self, until: float) -> None:
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM)
        self._until = until

    def _arm(self) -> None:
        left = self._until - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.settimeout(left)

    def connect(self, address: Any) -> None:
        self._arm()
        super().connect(address)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, until: float) -> None:
        super().__init__("localhost")
        self._path = str(path)
        self._until = until

    def connect(self) -> None:
        # Only a socket, never what a symlink at its path points to; connecting through the checked
        # descriptor means the path cannot be swapped between the check and the connect.
        fd = os.open(self._path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise NoAnswer(f"{self._path} is not a socket")
            sock = _DeadlineSocket(self._until)
            try:
                sock.connect(f"/proc/self/fd/{fd}")
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(fd)
        self.sock = sock


def _read_capped(resp: http.client.HTTPResponse, max_body: int, what: str) -> bytes:
    declared = resp.length  # None when chunked, absent or invalid: then read until the end or the cap
    if declared is not None and declared > max_body:
        raise BadAnswer(f"{what}: declares {declared} bytes, more than the {max_body} accepted")
    chunks, total = [], 0
    while True:
        chunk = resp.read(min(_READ_CHUNK, max_body + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_body:
            raise BadAnswer(f"{what}: body larger than the {max_body} bytes accepted")
        chunks.append(chunk)
    if declared is not None and total < declared:
        raise NoAnswer(f"{what}: connection closed after {total} of {declared} bytes")
    return b"".join(chunks)


def api_get(
    socket_path: Path,
    token: str,
    api: str,
    *,
    deadline: float = PROBE_DEADLINE_S,
    max_body: int = MAX_BODY_BYTES,
) -> Any:
    """GET ``/api/<api>`` (``api`` may carry a query string) and return the decoded JSON (``get_json``)."""
    return get_json(socket_path, token, f"/api/{api}", deadline=deadline, max_body=max_body)


def get_json(
    socket_path: Path,
    token: str,
    path: str,
    *,
    deadline: float = PROBE_DEADLINE_S,
    max_body: int = MAX_BODY_BYTES,
) -> Any:
    """GET ``path`` (it may carry a query string) and return the decoded JSON.

    Returns within ``deadline`` seconds (plus a decode of at most ``max_body`` bytes). Raises
    ``NoAnswer`` or ``BadAnswer`` (``.status`` is set for a status other than 200); never another
    exception for anything the server does.
    """
    what = path.split("?", 1)[0]
    until = time.monotonic() + deadline
    conn = _UnixConnection(socket_path, until)
    resp = None
    try:
        try:
            conn.request("GET", path, headers={AUTH_HEADER: token, "Host": "localhost"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise BadAnswer(f"{what}: status {resp.status}", status=resp.status)
            body = _read_capped(resp, max_body, what)
        except TimeoutError:
            raise NoAnswer(f"{what}: no complete answer within {deadline:.3g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, NoAnswer):
                raise
            raise NoAnswer(f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        if resp is not None:  # it owns the socket when the server said it would close
            resp.close()
        conn.close()
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
        raise BadAnswer(f"{what}: not JSON ({type(exc).__name__})") from None


def wait_ready(
    socket_path: Path,
    token: str,
    *,
    timeout: float,
    still_alive: Callable[[], bool],
    alive_check_every: float = 0.5,
) -> float:
    """Poll ``/api/status`` until Jupyter answers it with a JSON object; returns the seconds waited.

    Each attempt is bounded (at most 1 s, never past ``timeout``). Raises ``StartFailed`` when the
    container dies or the timeout passes.
    """
    t0 = time.monotonic()
    next_alive_check = t0 + alive_check_every
    while True:
        now = time.monotonic()
        left = t0 + timeout - now
        if left > 0 and socket_path.exists():
            try:
                if isinstance(api_get(socket_path, token, "status", deadline=min(1.0, left)), dict):
                    return time.monotonic() - t0
            except JupyterError:
                pass
        if now >= next_alive_check:
            next_alive_check = now + alive_check_every
            if not still_alive():
                raise StartFailed(
                    "the notebook container exited while starting (its last lines are kept with the session)",
                )
        if time.monotonic() - t0 > timeout:
            raise StartFailed(f"the notebook server did not answer within {max(timeout, 1):.0f} s")
        time.sleep(READY_POLL_S)
