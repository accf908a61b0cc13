"""A stand-in that answers like Jupyter's activity API on many UNIX sockets (SIMULATED sessions).

    python bench/fake_jupyter.py SESSIONS_DIR SID [SID ...]

Serves /user/<sid>/api/{status,kernels,terminals} on SESSIONS_DIR/<sid>/jupyter.sock with canned
JSON shaped like jupyter_server 2.x answers. Used only by bench/heartbeat_sweep.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path


def answer(path: str) -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if "/api/status" in path:
        body = {"connections": 1, "kernels": 1, "last_activity": now, "started": now}
    elif "/api/kernels" in path:
        body = [{"id": "k1", "name": "python3", "last_activity": now, "execution_state": "idle", "connections": 1}]
    elif "/api/terminals" in path:
        body = []
    else:
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    path = request.split(b" ", 2)[1].decode()
    writer.write(answer(path))
    await writer.drain()
    writer.close()


async def main(base: Path, sids: list[str]) -> None:
    servers = []
    for sid in sids:
        folder = base / sid
        folder.mkdir(parents=True, exist_ok=True)
        servers.append(await asyncio.start_unix_server(handle, path=str(folder / "jupyter.sock")))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
