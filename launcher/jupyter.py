"""A minimal HTTP client for a notebook's Jupyter server over its UNIX socket.

The worker talks to Jupyter the way the entry point does (same socket, same base URL, the
session's token in a header), with short timeouts; readiness is polled every 20 ms.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.errors import StartFailed

READY_POLL_S = 0.02


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api_get(socket_path: Path, session_id: str, token: str, api: str, timeout: float = 2.0) -> Any:
    """GET ``/user/<sid>/api/<api>`` and return the decoded JSON; raises OSError or ValueError."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request(
            "GET",
            f"/user/{session_id}/api/{api}",
            headers={"Authorization": f"token {token}", "Host": "localhost"},
        )
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ValueError(f"jupyter answered {resp.status} to /api/{api}")
        return json.loads(body)
    finally:
        conn.close()


def wait_ready(
    socket_path: Path,
    session_id: str,
    token: str,
    *,
    timeout: float,
    still_alive: Callable[[], bool],
    alive_check_every: float = 0.5,
) -> float:
    """Poll ``/api/status`` until Jupyter answers; returns the seconds waited.

    Raises ``StartFailed`` when the container dies or the timeout passes.
    """
    t0 = time.monotonic()
    next_alive_check = t0 + alive_check_every
    while True:
        now = time.monotonic()
        if socket_path.exists():
            try:
                api_get(socket_path, session_id, token, "status", timeout=1.0)
                return time.monotonic() - t0
            except (OSError, ValueError, http.client.HTTPException):
                pass
        if now >= next_alive_check:
            next_alive_check = now + alive_check_every
            if not still_alive():
                raise StartFailed(
                    "the notebook container exited while starting; an operator can read its log with `docker logs`",
                )
        if now - t0 > timeout:
            raise StartFailed(f"the notebook server did not answer within {timeout:.0f} s")
        time.sleep(READY_POLL_S)
