"""RBAC is a pure policy: a table of (role, permission) and of (actor, owner)."""

import pytest

from launcher.models import Actor, Permission, Role
from launcher.rbac import authorize, may_act_on


@pytest.mark.parametrize(
    ("role", "permission", "allowed"),
    [
        (Role.ADMIN, Permission.LAUNCH_NOTEBOOKS, True),
        (Role.ADMIN, Permission.MANAGE_NOTEBOOKS, True),
        (Role.RESEARCHER, Permission.LAUNCH_NOTEBOOKS, True),
        (Role.RESEARCHER, Permission.MANAGE_NOTEBOOKS, False),
        (Role.VIEWER, Permission.LAUNCH_NOTEBOOKS, False),
        (Role.VIEWER, Permission.MANAGE_NOTEBOOKS, False),
    ],
)
def test_authorize_table(role, permission, allowed):
    """Each role grants exactly its permissions."""
    assert authorize(Actor(name="u", role=role), permission) is allowed


@pytest.mark.parametrize(
    ("actor", "owner", "allowed"),
    [
        (Actor(name="ann", role=Role.RESEARCHER), "ann", True),
        (Actor(name="ann", role=Role.RESEARCHER), "bob", False),
        (Actor(name="vic", role=Role.VIEWER), "vic", False),
        (Actor(name="adm", role=Role.ADMIN), "bob", True),
        (Actor(name="adm", role=Role.ADMIN), "adm", True),
    ],
)
def test_may_act_on_table(actor, owner, allowed):
    """Owners act on their own session; only admins act on others'."""
    assert may_act_on(actor, owner) is allowed
