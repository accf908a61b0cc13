"""Per-process resources of the console and the current user (thin Streamlit glue)."""

from __future__ import annotations

import streamlit as st

from launcher.dispatch import CeleryDispatcher
from launcher.models import Actor, Permission
from launcher.rbac import authorize
from launcher.service import LauncherService
from launcher.settings import Settings
from launcher.store import SessionStore
from ui.auth import actor_from_claims, actor_from_cookie


@st.cache_resource
def get_service() -> LauncherService:
    """One service per console process, shared by every session and rerun (state lives in Redis)."""
    settings = Settings()
    return LauncherService(settings, SessionStore.from_settings(settings), CeleryDispatcher.from_settings(settings))


def page_context(permission: Permission | None) -> tuple[LauncherService, Actor]:
    """For a page file: the service and the signed-in actor, who must hold ``permission``."""
    service = get_service()
    actor = current_actor(service.settings)
    if actor is None or (permission is not None and not authorize(actor, permission)):
        st.error("You do not have access to this page.")
        st.stop()
    return service, actor


def current_actor(settings: Settings) -> Actor | None:
    if settings.auth_mode == "oidc":
        return actor_from_claims(settings, st.user.to_dict())
    return actor_from_cookie(settings, st.context.cookies)
