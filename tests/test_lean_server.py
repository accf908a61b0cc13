"""The Jupyter server without the modules it never uses here (issue 12, idle session memory; the notebook image's
nbl_lean_server): checked inside the real server process of the notebook image, and outside it (a kernel, any
other Python) nothing changes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from launcher.adapters.jupyter_http import api_get
from tests.conftest import IMAGE, docker_or_skip
from tests.helpers import BARE_SECRET, start_bare_server

pytestmark = pytest.mark.docker

# Runs inside the server process: Jupyter executes its config file after the server's modules are imported and
# before it serves. A thread records what the process holds once the server has started.
PROBE_CONFIG = """
import json, os, sys, threading, time

def _record():
    deadline = time.monotonic() + 60
    while "jupyterlab_server.listings_handler" not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    requests = sys.modules.get("requests")
    try:
        from jupyterlab.extensions.pypi import PyPIExtensionManager
        PyPIExtensionManager()
        pypi = "made"
    except RuntimeError as exc:
        pypi = str(exc)
    import importlib.metadata as metadata
    group = "nbconvert.exporters"
    seen = {
        "entry_points": [metadata.entry_points.__module__, sorted(e.name for e in metadata.entry_points(group=group)),
                         metadata.entry_points(group=group) == metadata.entry_points().select(group=group)],
        "loaded": sorted(m for m in ("httpx", "httpcore", "click", "urllib3", "arrow", "isoduration")
                         if sys.modules.get(m) is not None),
        "requests": type(requests).__name__,
        "pypi": pypi,
    }
    get = requests.get  # the first use of the stand-in imports the real module
    seen["after_use"] = [type(sys.modules["requests"]).__name__, "urllib3" in sys.modules, callable(get)]
    with open("/run/nb/probe.tmp", "w") as f:
        json.dump(seen, f)
    os.rename("/run/nb/probe.tmp", "/run/nb/probe.json")  # whole, never half-written

threading.Thread(target=_record, daemon=True).start()
"""

OUTSIDE = (
    "import json, sys, importlib.metadata, requests, httpx, isoduration, arrow\n"
    "from jupyterlab.extensions.pypi import PyPIExtensionManager\n"
    "print(json.dumps([type(requests).__name__, 'urllib3' in sys.modules, PyPIExtensionManager.__module__,\n"
    "                  importlib.metadata.entry_points.__module__]))"
)


def test_the_server_process_defers_what_it_never_uses_and_still_serves(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir(mode=0o755)
    (config / "jupyter_server_config.py").write_text(PROBE_CONFIG)
    container, socket = start_bare_server(
        docker_or_skip(),
        IMAGE,
        tmp_path,
        environment={"JUPYTER_CONFIG_DIR": "/probe"},
        volumes={str(config): {"bind": "/probe", "mode": "ro"}},
        label="lean-server",
    )
    try:
        probe = socket.parent / "probe.json"
        deadline = time.monotonic() + 90
        while not (probe.exists() and socket.exists()) and time.monotonic() < deadline:
            container.reload()
            assert container.status in ("created", "running"), container.logs()[-3000:].decode(errors="replace")
            time.sleep(0.2)
        assert socket.exists(), container.logs()[-3000:].decode(errors="replace")  # the server serves
        seen = json.loads(probe.read_text())
        exporters = api_get(socket, BARE_SECRET, "nbconvert", deadline=30)  # what JupyterLab asks on opening a notebook
    finally:
        container.remove(force=True)
    assert seen["loaded"] == [], seen  # none of httpx, its CLI's click, requests' urllib3, isoduration's arrow
    assert seen["requests"] == "_Deferred", seen
    assert "read-only extension manager" in seen["pypi"], seen
    assert seen["after_use"] == ["module", True, True], seen  # used, it is the real module
    module, names, consistent = seen["entry_points"]
    assert module == "nbl_lean_server", seen  # scanned once, then kept
    assert {"html", "markdown", "python", "script", "webpdf"} <= set(names) and consistent, seen
    assert set(exporters) == set(names), exporters
    assert exporters["html"] == {"output_mimetype": "text/html"}, exporters


def test_other_python_processes_import_as_always() -> None:
    """A kernel, a report run, anything else started with python3: what a researcher imports is the real thing."""
    client = docker_or_skip()
    out = client.containers.run(
        IMAGE,
        ["python3", "-c", OUTSIDE],
        remove=True,
        user="1000:1000",
        network_mode="none",
        environment={"HOME": "/tmp"},
        labels={"io.nblauncher.test": "lean-server"},
    )
    assert json.loads(out) == ["module", True, "jupyterlab.extensions.pypi", "importlib.metadata"]
