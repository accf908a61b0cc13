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

It is also the server's extension ``nbl_lean_server`` (enabled in the image's jupyter_server_config.d), which, once
the server has loaded its modules and before it serves, spares JupyterLab's first page two waits on work whose answer
is already known:

- Kernel specs without importing IPython and ipykernel. jupyter_client imports the IPython package only to name
  ``~/.ipython/kernels`` (``IPython.paths.get_ipython_dir``), and ipykernel only to tell its bundled ``python3`` spec
  from an installed one; the image installs one. Both imports took 0.07-0.13 s of the server's first ``/api/kernelspecs``
  (which JupyterLab's page waits for) and 2.6 MiB, and kernels are separate processes that import them anyway.
- Settings schemas checked once, when the image was built. JupyterLab's settings answer checks each of its ~70
  schemas against the JSON Schema meta-schema, on every request: about 60 ms of every page load's wait for settings. The
  image's build runs the same check on the same schemas (overrides applied) and records each one's digest
  (``record_checked_schemas``); the server skips the check for a schema with a recorded digest, which is the same
  content, and checks every other one (a researcher's own overrides or extensions) as before.

``NBL_LEAN_SERVER=0`` in the environment turns all of it off (``bench/server_memory.py`` compares the two). Measured
there, one idle server: PSS 60.3 -> 51.7 MiB (docs/benchmarks.md).
"""

import hashlib
import importlib
import importlib.util
import json
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


# -- the server extension: kernel specs and settings schemas ------------------------------------------------------

CHECKED_SCHEMAS = "/usr/local/share/nbl/checked-schemas.sha256"  # written by record_checked_schemas at image build
_checked: list[frozenset[str]] = []


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbl_lean_server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    if os.environ.get("NBL_LEAN_SERVER") == "0":
        return
    _kernel_specs_without_ipython()
    _schemas_checked_at_build()


def _ipython_dir() -> str:
    """Where IPython keeps its profile, as ``IPython.paths.get_ipython_dir`` names it (``$IPYTHONDIR`` or
    ``~/.ipython``), without importing IPython. IPython would name a temporary folder instead when that one cannot be
    written: a new, empty one, with no kernel spec in it either."""
    return os.path.normpath(os.path.expanduser(os.environ.get("IPYTHONDIR") or os.path.join("~", ".ipython")))


def _ipykernel_resources() -> str | None:
    """ipykernel's own ``python3`` spec folder (``ipykernel.kernelspec.RESOURCES``), found without importing it."""
    spec = importlib.util.find_spec("ipykernel")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "resources")


def _kernel_specs_without_ipython() -> None:
    from jupyter_client import kernelspec

    manager = kernelspec.KernelSpecManager
    stock_dirs = manager._kernel_dirs_default
    stock_by_name = manager._get_kernel_spec_by_name

    def _kernel_dirs_default(self: Any) -> list[str]:
        if "IPython" in sys.modules:
            return stock_dirs(self)
        return [*kernelspec.jupyter_path("kernels"), os.path.join(_ipython_dir(), "kernels")]

    def _get_kernel_spec_by_name(self: Any, kernel_name: str, resource_dir: str) -> Any:
        # jupyter_client imports ipykernel here only to see whether resource_dir is ipykernel's bundled spec.
        native = kernel_name == kernelspec.NATIVE_KERNEL_NAME and "ipykernel" not in sys.modules
        if not native or resource_dir == _ipykernel_resources():
            return stock_by_name(self, kernel_name, resource_dir)
        kspec = self.kernel_spec_class.from_resource_dir(resource_dir)
        if not kernelspec.KPF.instance(parent=self.parent).is_provisioner_available(kspec):
            raise kernelspec.NoSuchKernel(kernel_name)
        return kspec

    manager._kernel_dirs_default = _kernel_dirs_default  # type: ignore[method-assign]
    manager._get_kernel_spec_by_name = _get_kernel_spec_by_name  # type: ignore[method-assign]


def schema_digest(schema: Any) -> str:
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _checked_digests() -> frozenset[str]:
    if not _checked:
        try:
            with open(CHECKED_SCHEMAS, encoding="ascii") as f:
                _checked.append(frozenset(f.read(1 << 20).split()))
        except OSError:
            _checked.append(frozenset())
    return _checked[0]


class _CheckedAtBuild:
    """Stands in for jsonschema's Draft7Validator in jupyterlab_server.settings_utils: ``check_schema`` passes a
    schema whose digest the image's build recorded after the same check, and checks any other; making one gives
    Draft7Validator's own validator."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from jsonschema import Draft7Validator

        return Draft7Validator(*args, **kwargs)

    @staticmethod
    def check_schema(schema: Any, *args: Any, **kwargs: Any) -> None:
        from jsonschema import Draft7Validator

        if schema_digest(schema) not in _checked_digests():
            Draft7Validator.check_schema(schema, *args, **kwargs)


def _schemas_checked_at_build() -> None:
    from jupyterlab_server import settings_utils

    settings_utils.Validator = _CheckedAtBuild  # type: ignore[misc,assignment]


def record_checked_schemas(out: str = CHECKED_SCHEMAS) -> int:
    """At image build: check every settings schema JupyterLab serves, as its settings answer does (overrides
    applied), and record the digests of those that pass; how many. A schema that fails stops the build."""
    import tempfile

    from jsonschema import Draft7Validator
    from jupyter_core.paths import jupyter_path
    from jupyterlab_server import settings_utils

    digests: set[str] = set()

    def check(schema: Any) -> None:
        Draft7Validator.check_schema(schema)
        digests.add(schema_digest(schema))

    lab = os.environ["JUPYTERLAB_DIR"]
    app_settings = os.path.join(lab, "settings")
    overrides, error = settings_utils._get_overrides(app_settings)
    if error:
        raise SystemExit(f"the image's settings overrides do not load: {error}")
    settings_utils.Validator = type("Recording", (), {"check_schema": staticmethod(check)})  # type: ignore[misc]
    with tempfile.TemporaryDirectory() as user_settings:
        settings_utils.get_settings(
            app_settings,
            os.path.join(lab, "schemas"),
            user_settings,
            overrides=overrides,
            labextensions_path=jupyter_path("labextensions"),
        )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="ascii") as f:
        f.write("".join(f"{d}\n" for d in sorted(digests)))
    return len(digests)


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
