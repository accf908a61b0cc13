"""A stand-in for notebooks' Jupyter servers on many UNIX sockets: well-behaved or hostile.

    python bench/fake_jupyter.py < SESSIONS

SESSIONS has one line per session: ``SOCKET_PATH TOKEN [BEHAVIOUR]`` (default ``idle``). Once every
socket listens it prints ``ready``; it serves until terminated. Used by bench/heartbeat_sweep.py
(SIMULATED sessions) and tests/test_probe_bounds.py (hostile servers).

Well-behaved servers answer like jupyter_server 2.x at the root of their origin
(``/api/status``, ``/api/kernels``, ``/api/terminals``), only to ``X-Nbl-Auth: <token>`` (403
otherwise). The hostile ones do what a notebook's code could make its server do; see BEHAVIOURS.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# One byte this often: just inside a 2 s per-read timeout, forever (FAKE_JUPYTER_SLOW_GAP_S overrides).
SLOW_GAP_S = float(os.environ.get("FAKE_JUPYTER_SLOW_GAP_S", "1.9"))
FUTURE = "2999-01-01T00:00:00Z"


def _stamp(ago_s: float = 0.0) -> str:
    return (datetime.now(UTC) - timedelta(seconds=ago_s)).isoformat().replace("+00:00", "Z")


def _kernel(state: str = "idle", last_activity: Any = None) -> dict[str, Any]:
    return {
        "id": "k1",
        "name": "python3",
        "last_activity": _stamp() if last_activity is None else last_activity,
        "execution_state": state,
        "connections": 1,
    }


def _response(status: int, body: bytes, extra: str = "") -> bytes:
    reason = {200: "OK", 403: "Forbidden", 404: "Not Found"}.get(status, "Other")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


# What each API answers, per JSON behaviour: a value (sent as JSON), raw bytes (sent as they are),
# or None (404). Missing entries answer like "idle".
_IDLE: dict[str, Any] = {
    "status": lambda: {"connections": 1, "kernels": 1, "last_activity": _stamp(), "started": _stamp(3600)},
    "kernels": lambda: [_kernel()],
    "terminals": lambda: [],
}
_JSON_BEHAVIOURS: dict[str, dict[str, Any]] = {
    "idle": {},
    "busy": {"kernels": lambda: [_kernel("busy", _stamp(3600))]},
    "future": {
        "kernels": lambda: [_kernel("idle", FUTURE)],
        "terminals": lambda: [{"name": "1", "last_activity": FUTURE}],
    },
    "no-terminals": {"terminals": lambda: None},
    "not-json": {"kernels": lambda: b"<html>not json</html>"},
    "nested": {"kernels": lambda: b"[" * 200_000 + b"]" * 200_000},
    "status-list": {"status": lambda: [1, 2, 3]},
    "kernels-object": {"kernels": lambda: {"id": "k1", "execution_state": "busy"}},
    "kernel-items": {"kernels": lambda: [1, "busy", None]},
    "bad-stamp": {"kernels": lambda: [_kernel("idle", "yesterday")]},
    "stamp-number": {"kernels": lambda: [_kernel("idle", 1e300)]},
    "bad-count": {"status": lambda: {"connections": "many"}},
}


def _json_answer(behaviour: str, path: str, headers: dict[str, str], token: str) -> bytes:
    if headers.get("x-nbl-auth") != token:
        return _response(403, b'{"message": "Forbidden"}')
    route = path.split("?", 1)[0]
    if not route.startswith("/api/"):
        return _response(404, b"{}")
    api = route[len("/api/") :]
    table = {**_IDLE, **_JSON_BEHAVIOURS[behaviour]}
    if api not in table:
        return _response(404, b"{}")
    value = table[api]()
    if value is None:
        return _response(404, b'{"message": "Not Found"}')
    return _response(200, value if isinstance(value, bytes) else json.dumps(value).encode())


Writer = asyncio.StreamWriter
Hostile = Callable[[asyncio.StreamReader, Writer], Awaitable[None]]


async def _until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def _dribble(writer: Writer, data: bytes, then_forever: bytes = b" ") -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(SLOW_GAP_S)
    while not writer.is_closing():
        writer.write(then_forever)
        await writer.drain()
        await asyncio.sleep(SLOW_GAP_S)


async def _slow_loris(reader: asyncio.StreamReader, writer: Writer) -> None:
    """Headers at once, declaring 100 MB, then the body one byte every 1.9 s."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
    await _dribble(writer, b"")


async def _slow_body(reader: asyncio.StreamReader, writer: Writer) -> None:
    """Headers at once, declaring 100 kB (under any cap), then the body one byte every 1.9 s."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    await _dribble(writer, b"")


async def _slow_head(reader: asyncio.StreamReader, writer: Writer) -> None:
    """The status line and headers one byte every 1.9 s, never finished."""
    await _dribble(writer, b"HTTP/1.1 200 OK\r\nX-Pad: ", then_forever=b"a")


async def _hang(reader: asyncio.StreamReader, writer: Writer) -> None:
    """Reads the request and never answers."""
    await _until_closed(reader)


async def _huge(reader: asyncio.StreamReader, writer: Writer) -> None:
    """Declares and sends a 64 MiB body as fast as the client reads."""
    size = 64 << 20
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
    block = b" " * (1 << 16)
    for _ in range(size // len(block)):
        writer.write(block)
        await writer.drain()


async def _endless(reader: asyncio.StreamReader, writer: Writer) -> None:
    """A chunked body of 64 KiB chunks that never ends, as fast as the client reads."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    while not writer.is_closing():
        writer.write(chunk)
        await writer.drain()


async def _unsized(reader: asyncio.StreamReader, writer: Writer) -> None:
    """No length, no chunks: the body runs until the server closes, which it never does."""
    writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
    while not writer.is_closing():
        writer.write(b" " * 0x10000)
        await writer.drain()


async def _garbage(reader: asyncio.StreamReader, writer: Writer) -> None:
    """Not HTTP at all."""
    writer.write(b"\x00\xffSSH-2.0-nope\r\n\r\n")
    await writer.drain()


async def _close(reader: asyncio.StreamReader, writer: Writer) -> None:
    """Closes without a word."""


HOSTILE: dict[str, Hostile] = {
    "slow-loris": _slow_loris,
    "slow-body": _slow_body,
    "slow-head": _slow_head,
    "hang": _hang,
    "huge": _huge,
    "endless-chunks": _endless,
    "unsized": _unsized,
    "garbage": _garbage,
    "close": _close,
}
BEHAVIOURS = sorted([*_JSON_BEHAVIOURS, *HOSTILE])


def _parse(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return path, headers


def handler(token: str, behaviour: str) -> Callable[[asyncio.StreamReader, Writer], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if behaviour in HOSTILE:
                await HOSTILE[behaviour](reader, writer)
            else:
                path, headers = _parse(head)
                writer.write(_json_answer(behaviour, path, headers, token))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away (what a bounded client does to a hostile server)
        finally:
            writer.close()

    return handle


async def serve(sessions: list[tuple[Path, str, str]]) -> None:
    servers = []
    for path, token, behaviour in sessions:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        servers.append(await asyncio.start_unix_server(handler(token, behaviour), path=str(path)))
    print("ready", flush=True)
    await asyncio.Event().wait()


def read_sessions(lines: list[str]) -> list[tuple[Path, str, str]]:
    sessions = []
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        behaviour = fields[2] if len(fields) > 2 else "idle"
        if behaviour not in BEHAVIOURS:
            raise SystemExit(f"unknown behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")
        sessions.append((Path(fields[0]), fields[1], behaviour))
    return sessions


if __name__ == "__main__":
    asyncio.run(serve(read_sessions(sys.stdin.read().splitlines())))
