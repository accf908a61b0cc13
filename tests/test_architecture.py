"""The shape the design promises, checked: the domain imports no adapter and no vendor library."""

from __future__ import annotations

import ast
from pathlib import Path

from launcher.settings import REPO_ROOT

VENDORS = ("redis", "celery", "kombu", "docker")
# The composition roots and process entry points wire adapters; the domain must not.
ROOTS = {"bootstrap.py", "entrypoint.py", "cli.py", "images.py"}  # composition roots and process entry points


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_domain_imports_no_adapter_and_no_vendor():
    """launcher/ (outside adapters/ and the composition roots) imports neither Redis, Celery, kombu, Docker
    nor any adapter: it talks to them only through launcher.ports."""
    offenders = {}
    for path in sorted((REPO_ROOT / "launcher").glob("*.py")):
        if path.name in ROOTS:
            continue
        bad = sorted(
            m for m in imported_modules(path) if m.split(".")[0] in VENDORS or m.startswith("launcher.adapters")
        )
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_adapters_are_the_only_vendor_importers_in_launcher():
    """Every launcher module that imports a vendor library is an adapter or a composition root."""
    importers = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "launcher").rglob("*.py")
        if any(m.split(".")[0] in VENDORS for m in imported_modules(path))
    }
    assert all(p.startswith("launcher/adapters/") or Path(p).name in ROOTS for p in importers), importers
