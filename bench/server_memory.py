"""Benchmark: an idle session's Jupyter server, with and without the lean start (docker/notebook/nbl_lean_server.py),
alternating: memory once it is idle, the time until its socket answers, the two answers JupyterLab's first page waits
for (``GET /api/kernelspecs`` and ``GET /lab/api/settings``, each the server's first), what ``GET /api/nbconvert``
(asked each time a notebook opens) costs, first and second time, and the memory after all of those.

    python bench/server_memory.py [--rounds 3] [--image launcher-notebook:latest] [--settle 6]

Each round starts two containers of the notebook image with the session's command and options (no network, the
session's user, its socket and secret folders), one with ``NBL_LEAN_SERVER=0``. When the socket appears the boot is
timed; after ``--settle`` seconds PSS, RSS and anonymous memory are summed over the container's processes from
``/proc/<pid>/smaps_rollup`` (run as root on the Docker host); then the first page's two answers are timed, then
``/api/nbconvert`` twice, then memory again. Containers are removed at the end of each round.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from launcher.adapters.jupyter_http import api_get, get_json, wait_ready  # noqa: E402
from launcher.settings import Settings  # noqa: E402
from tests.helpers import BARE_SECRET, start_bare_server  # noqa: E402

FIELDS = {"Pss": "pss", "Rss": "rss", "Anonymous": "anon"}


def memory(container: docker.models.containers.Container) -> dict[str, float]:
    """MiB summed over the container's processes."""
    top = container.top()
    pids = [int(row[top["Titles"].index("PID")]) for row in top["Processes"]]
    total = dict.fromkeys(FIELDS.values(), 0.0)
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in FIELDS:
                total[FIELDS[key]] += int(line.split()[1]) / 1024
    total["processes"] = len(pids)
    return total


def one(client: docker.DockerClient, image: str, work: Path, lean: bool, settle: float) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="srv-", dir=work))
    t0 = time.monotonic()
    container, socket = start_bare_server(
        client, image, folder, environment={} if lean else {"NBL_LEAN_SERVER": "0"}, label="server-memory"
    )
    try:
        deadline = t0 + 60
        while not socket.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"no Jupyter socket after 60 s:\n{container.logs()[-2000:].decode(errors='replace')}")
            time.sleep(0.01)
        boot = time.monotonic() - t0
        wait_ready(socket, BARE_SECRET, timeout=60, still_alive=lambda: True)
        time.sleep(settle)
        idle = memory(container)  # before anything imports nbconvert (8-11 MiB more once a notebook has opened)
        t1 = time.monotonic()
        api_get(socket, BARE_SECRET, "kernelspecs", deadline=30)
        kernelspecs = time.monotonic() - t1
        t1 = time.monotonic()
        get_json(socket, BARE_SECRET, "/lab/api/settings", deadline=30, max_body=4 << 20)
        settings = time.monotonic() - t1
        nbconvert = []
        for _ in range(2):
            t1 = time.monotonic()
            api_get(socket, BARE_SECRET, "nbconvert", deadline=30)
            nbconvert.append(time.monotonic() - t1)
        after = memory(container)
        return {
            "boot_s": boot,
            "kernelspecs_s": kernelspecs,
            "settings_s": settings,
            "nbconvert_1_s": nbconvert[0],
            "nbconvert_2_s": nbconvert[1],
            **idle,
            "pss_after": after["pss"],
        }
    finally:
        container.remove(force=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image", default=Settings.of_checkout().notebook_image)
    ap.add_argument("--settle", type=float, default=6.0, help="seconds idle before measuring")
    args = ap.parse_args()
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="nbl-srvmem-", dir="/tmp"))
    work.chmod(0o755)
    runs: dict[str, list[dict[str, float]]] = {"lean": [], "plain": []}
    try:
        for i in range(args.rounds):
            for name in ("plain", "lean"):
                m = one(client, args.image, work, name == "lean", args.settle)
                runs[name].append(m)
                print(
                    f"round {i + 1} {name:5s}: boot {m['boot_s']:.3f} s, kernel specs {m['kernelspecs_s']:.3f} s, "
                    f"settings {m['settings_s']:.3f} s, /api/nbconvert {m['nbconvert_1_s']:.3f} s "
                    f"then {m['nbconvert_2_s']:.3f} s, PSS {m['pss']:.1f} MiB (after those {m['pss_after']:.1f}), "
                    f"RSS {m['rss']:.1f} MiB, anonymous {m['anon']:.1f} MiB ({m['processes']:.0f} processes)",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, values in runs.items():
        med = {k: statistics.median(v[k] for v in values) for k in values[0]}
        print(
            f"{name:5s} (median of {len(values)}): PSS {med['pss']:.1f} MiB, RSS {med['rss']:.1f} MiB, "
            f"anonymous {med['anon']:.1f} MiB; container start to socket {med['boot_s']:.3f} s; "
            f"first /api/kernelspecs {med['kernelspecs_s']:.3f} s, first /lab/api/settings {med['settings_s']:.3f} s; "
            f"/api/nbconvert {med['nbconvert_1_s']:.3f} s, then {med['nbconvert_2_s']:.3f} s; "
            f"PSS after those {med['pss_after']:.1f} MiB"
        )


if __name__ == "__main__":
    main()
