"""The Jupyter server without the modules it never uses here (issue 12, idle session memory; the notebook image's
nbl_lean_server): checked inside the real server process of the notebook image, and outside it (a kernel, any
other Python) nothing changes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from launcher.adapters.jupyter_http import api_get, get_json
from tests.conftest import IMAGE, docker_or_skip
from tests.helpers import BARE_SECRET, start_bare_server, wait_for

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


# Counts the settings schemas' meta-schema checks (jsonschema's own Draft7Validator.check_schema, called by the stock
# settings code or by the lean stand-in) and, when asked (a file "ask" beside the socket), records them and which
# of IPython and ipykernel the server process has imported.
FIRST_PAGE_PROBE = """
import json, os, sys, threading, time
import jsonschema

_checks = []
_stock = jsonschema.Draft7Validator.check_schema.__func__

def _counting(cls, schema, *args, **kwargs):
    if sys._getframe(1).f_globals["__name__"] in ("jupyterlab_server.settings_utils", "nbl_lean_server"):
        _checks.append(1)
    return _stock(cls, schema, *args, **kwargs)

jsonschema.Draft7Validator.check_schema = classmethod(_counting)

def _record():
    deadline = time.monotonic() + 120
    while not os.path.exists("/run/nb/ask") and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = {"checks": len(_checks), "imported": sorted(m for m in ("IPython", "ipykernel") if m in sys.modules)}
    with open("/run/nb/seen.tmp", "w") as f:
        json.dump(seen, f)
    os.rename("/run/nb/seen.tmp", "/run/nb/seen.json")

threading.Thread(target=_record, daemon=True).start()
"""

# A default the image's build never saw: this one plugin's schema differs from the recorded one (overrides applied).
OVERRIDE = {"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}


def _first_page_answers(tmp_path: Path, lean: str) -> tuple[object, object, dict[str, object]]:
    """A bare server's answers to the first page's kernel specs and settings, and what its process then held."""
    folder = tmp_path / f"lean-{lean}"
    config = folder / "config"
    (config / "labconfig").mkdir(parents=True)
    folder.chmod(0o755)
    config.chmod(0o755)
    (config / "labconfig").chmod(0o755)
    (config / "jupyter_server_config.py").write_text(FIRST_PAGE_PROBE)
    (config / "labconfig" / "default_setting_overrides.json").write_text(json.dumps(OVERRIDE))
    (folder / "run").mkdir()
    container, socket = start_bare_server(
        docker_or_skip(),
        IMAGE,
        folder / "run",
        environment={"JUPYTER_CONFIG_DIR": "/probe", "NBL_LEAN_SERVER": lean},
        volumes={str(config): {"bind": "/probe", "mode": "ro"}},
        label="lean-server",
    )
    try:
        wait_for(socket.exists, 90, "the server's socket")
        kernelspecs = api_get(socket, BARE_SECRET, "kernelspecs", deadline=30)
        settings = get_json(socket, BARE_SECRET, "/lab/api/settings", deadline=30, max_body=4 << 20)
        (socket.parent / "ask").touch()
        seen_file = socket.parent / "seen.json"
        wait_for(seen_file.exists, 30, "the probe's record")
        return kernelspecs, settings, json.loads(seen_file.read_text())
    finally:
        container.remove(force=True)


def test_the_first_page_gets_the_stock_answers_without_ipython_or_rechecking_the_images_schemas(
    tmp_path: Path,
) -> None:
    """Kernel specs without importing IPython or ipykernel, and settings without the meta-schema check of the schemas
    the image's build checked: the same answers as the stock server (NBL_LEAN_SERVER=0), and a schema the build did
    not see (here: a default overridden in the user's labconfig) is still checked."""
    lean_specs, lean_settings, lean_seen = _first_page_answers(tmp_path, "1")
    stock_specs, stock_settings, stock_seen = _first_page_answers(tmp_path, "0")
    assert stock_seen["imported"] == ["IPython", "ipykernel"], stock_seen  # what the stock server pays for
    assert lean_seen["imported"] == [], lean_seen
    assert lean_specs == stock_specs
    assert set(lean_specs["kernelspecs"]) == {"python3"}, lean_specs  # type: ignore[index]
    assert lean_settings == stock_settings
    plugins = {p["id"]: p for p in lean_settings["settings"]}  # type: ignore[index]
    assert len(plugins) > 60, sorted(plugins)
    themes = plugins["@jupyterlab/apputils-extension:themes"]["schema"]["properties"]["theme"]
    assert themes["default"] == "JupyterLab Dark", themes  # the override is served
    # The stock answer checks every schema (72 checks for 71 plugins in this image); the lean one only the schema the
    # build did not see.
    assert stock_seen["checks"] >= len(plugins), stock_seen
    assert lean_seen["checks"] == 1, lean_seen
