"""Input checks for everything that ends up in a path, a container name or a label.

Each function returns the value it accepted or raises ``InvalidRequest``; none touches the disk
except ``safe_child``, which only resolves.
"""

from __future__ import annotations

import re
from pathlib import Path

from launcher.errors import InvalidRequest

USER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
TEMPLATE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SESSION_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def validate_user_id(user: object) -> str:
    if not isinstance(user, str) or not USER_ID_RE.fullmatch(user) or ".." in user:
        shown = repr(user)[:40]
        raise InvalidRequest(
            f"invalid user id {shown}: use 1-64 lowercase letters, digits, '.', '_', '-' or '@', "
            "starting with a letter or digit"
        )
    return user


def validate_template_name(name: object) -> str:
    if not isinstance(name, str) or not TEMPLATE_RE.fullmatch(name):
        shown = repr(name)[:40]
        raise InvalidRequest(f"invalid template name {shown}: use lowercase letters, digits and '_'")
    return name


def validate_session_name(name: object) -> str:
    if not isinstance(name, str) or not SESSION_NAME_RE.fullmatch(name):
        shown = repr(name)[:40]
        raise InvalidRequest(
            f"invalid session name {shown}: use 1-40 lowercase letters, digits, '_' or '-', starting with a letter "
            "or digit"
        )
    return name


def validate_profile_name(name: object, known: list[str]) -> str:
    if not isinstance(name, str) or not PROFILE_RE.fullmatch(name) or name not in known:
        raise InvalidRequest(f"unknown profile {repr(name)[:40]}; available: {', '.join(known)}")
    return name


def available_templates(templates_dir: Path) -> list[str]:
    """Template names found in the templates folder (``<name>.ipynb``, regular files only)."""
    if not templates_dir.is_dir():
        return []
    return sorted(
        p.stem
        for p in templates_dir.glob("*.ipynb")
        if p.is_file() and not p.is_symlink() and TEMPLATE_RE.fullmatch(p.stem)
    )


def resolve_template(templates_dir: Path, name: object) -> Path:
    """The template file for ``name``, or ``InvalidRequest`` naming the templates that exist."""
    name = validate_template_name(name)
    known = available_templates(templates_dir)
    if name not in known:
        raise InvalidRequest(f"unknown template {name!r}; available: {', '.join(known) or 'none'}")
    return safe_child(templates_dir, f"{name}.ipynb")


def safe_child(base: Path, name: str) -> Path:
    """``base/name`` when it stays directly inside ``base`` and is not a symlink."""
    if not name or "/" in name or "\\" in name or name in {".", ".."} or "\0" in name:
        raise InvalidRequest(f"invalid path component {name[:40]!r}")
    base_resolved = base.resolve()
    child = base_resolved / name
    if child.is_symlink() or child.resolve().parent != base_resolved:
        raise InvalidRequest(f"path {name[:40]!r} escapes {base}")
    return child
