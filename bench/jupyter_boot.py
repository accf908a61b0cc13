"""Benchmark: Jupyter's boot inside a notebook container, the image's packages read through the engine's storage
driver against the read-only host copy (``workers/pyprefix.py``), alternating.

    python bench/jupyter_boot.py [--rounds 4] [--image launcher-notebook:latest]

Each round runs two containers (no network, the session's user) that start JupyterLab with the session's options
and print the time from the interpreter's first line to the moment the server would start its event loop; the
container then exits. The host copy is made first in a temporary folder (and removed at the end).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from launcher.adapters.docker_runtime import DockerRuntime  # noqa: E402
from launcher.settings import Settings  # noqa: E402
from launcher.spec import IMAGE_PACKAGES  # noqa: E402
from workers import pyprefix  # noqa: E402

BOOT = """
import os, sys, time
t0 = time.perf_counter()
import jupyter_server.serverapp as sa
def stop(self):
    print(f"{time.perf_counter() - t0:.3f}", flush=True)
    os._exit(0)
sa.ServerApp.start_ioloop = stop
sys.argv = ["jupyter-lab", "--no-browser", "--ServerApp.sock=/tmp/j.sock", "--ServerApp.root_dir=/tmp",
            "--LabApp.extension_manager=readonly", "--LabApp.news_url=", "--ServerApp.allow_remote_access=True"]
from jupyterlab.labapp import main
main()
"""


def boot(client: docker.DockerClient, image: str, prefix: Path | None) -> float:
    volumes = {str(prefix): {"bind": IMAGE_PACKAGES, "mode": "ro"}} if prefix else {}
    out = client.containers.run(
        image,
        ["python3", "-c", BOOT],
        network_mode="none",
        user="1000:1000",
        environment={"HOME": "/tmp", "JUPYTER_RUNTIME_DIR": "/tmp/rt"},
        tmpfs={"/tmp": "rw,size=64m"},
        read_only=True,
        volumes=volumes,
        remove=True,
    )
    return float(out.decode().strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--image", default=Settings.of_checkout().notebook_image)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbl-boot-", dir="/tmp"))
    work.chmod(0o755)
    try:
        copy = pyprefix.copy(DockerRuntime(), args.image, work / "packages")
        if copy is None:
            sys.exit("the copy of the image's packages failed")
        client = docker.from_env()
        image_s, copy_s = [], []
        for i in range(args.rounds):
            image_s.append(boot(client, args.image, None))
            copy_s.append(boot(client, args.image, copy))
            print(f"round {i + 1}: image {image_s[-1]:.3f} s, host copy {copy_s[-1]:.3f} s", flush=True)
        for name, values in (("image's layers", image_s), ("host copy", copy_s)):
            print(
                f"Jupyter boot from the {name}: median {statistics.median(values):.3f} s "
                f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
