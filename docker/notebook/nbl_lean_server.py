"""A session's Jupyter server without the modules it imports but never uses here (8.6 MiB less memory, idle), and
without rescanning every installed package's entry points on each call.

Python runs this at start (``nbl_lean_server.pth`` in site-packages imports it) and it acts only in the server
process, the one started as ``python3 -m jupyterlab`` (``launcher.spec.jupyter_command``). Kernels, report runs
and everything else a researcher starts import exactly what they always did. In the server it defers:

- ``jupyterlab.extensions.pypi``: the PyPI extension manager, imported by ``jupyterlab.extensions`` even when
  the read-only manager is configured (we pass ``--LabApp.extension_manager=readonly``: a notebook has no
  network). It pulls in httpx, httpcore, h11, click and Pygments' lexers. Replaced by a stand-in whose manager
  refuses to be made.
- ``requests``: imported at the top of ``jupyterlab_server.listings_handler``, used there only to fetch extension
  allow/block lists from URLs, which we do not configure. Replaced by a module that imports the real one on its
  first attribute access (``importlib.util.LazyLoader`` cannot: on 3.11 the import system reads ``__spec__``,
  which loads it).
- ``isoduration``: jsonschema's optional checker for the ``duration`` string format (with arrow), which no
  schema Jupyter validates uses. jsonschema skips the check when the import fails.

And it scans entry points once. ``importlib.metadata.entry_points(...)`` reads every installed package's
``entry_points.txt`` on each call (some 120 files), and nbconvert calls it once per exporter: JupyterLab's
``GET /api/nbconvert``, made each time a notebook opens, took 0.7-0.9 s of the server's CPU, 0.15-0.18 s with the
scan kept. The packages a server sees do not change under it (the image's are read-only; Jupyter loads its
extensions at start anyway): a package a researcher installs while the server runs is seen by the next session.

``NBL_LEAN_SERVER=0`` in the environment turns it off (``bench/server_memory.py`` compares the two). Measured
there, one idle server: PSS 60.3 -> 51.7 MiB (docs/benchmarks.md).
"""

import importlib
import importlib.util
import os
import sys
import threading
import types
from typing import Any

_SERVER_ARGV = ["-m", "jupyterlab"]
_lock = threading.Lock()  # a deferred module becoming the real one
_scan_lock = threading.Lock()  # the one scan of entry points


class _NoPyPIManager:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("notebooks have no network here: only the read-only extension manager is available")


class _Deferred(types.ModuleType):
    """Stands in for a module until something reads one of its attributes, then becomes it."""

    def __getattr__(self, attr: str) -> object:  # called only for attributes the stand-in lacks
        with _lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def _defer(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None:  # not installed: the import fails where it always would
        return
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in


def _scan_entry_points_once() -> None:
    import importlib.metadata as metadata

    scan = metadata.entry_points
    found: list[Any] = []

    def entry_points(**params: Any) -> Any:
        with _scan_lock:
            if not found:
                found.append(scan())
        return found[0].select(**params) if params else found[0]

    metadata.entry_points = entry_points  # type: ignore[assignment]


def _apply() -> None:
    if sys.orig_argv[1:3] != _SERVER_ARGV or os.environ.get("NBL_LEAN_SERVER") == "0":
        return
    pypi = types.ModuleType("jupyterlab.extensions.pypi")
    pypi.PyPIExtensionManager = _NoPyPIManager  # type: ignore[attr-defined]
    sys.modules[pypi.__name__] = pypi
    _defer("requests")
    sys.modules["isoduration"] = None  # type: ignore[assignment]  # an import of it raises ImportError
    _scan_entry_points_once()


_apply()
