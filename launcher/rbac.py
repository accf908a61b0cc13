"""Role-based access: pure policy, table-tested in tests/test_rbac.py."""

from __future__ import annotations

from launcher.models import Actor, Permission, Role

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset({Permission.LAUNCH_NOTEBOOKS, Permission.MANAGE_NOTEBOOKS}),
    Role.RESEARCHER: frozenset({Permission.LAUNCH_NOTEBOOKS}),
    Role.VIEWER: frozenset(),
}


def authorize(actor: Actor, permission: Permission) -> bool:
    """Whether the actor's role grants the permission."""
    return permission in ROLE_PERMISSIONS.get(actor.role, frozenset())


def may_act_on(actor: Actor, owner: str) -> bool:
    """Whether the actor may start, stop or see the token of ``owner``'s session.

    Owners need LAUNCH_NOTEBOOKS for their own session; anyone else needs MANAGE_NOTEBOOKS.
    """
    if actor.name == owner:
        return authorize(actor, Permission.LAUNCH_NOTEBOOKS)
    return authorize(actor, Permission.MANAGE_NOTEBOOKS)
