"""Per-process resources of the console and the current user (thin Streamlit glue).

The current user is resolved again on every script run, every fragment rerun and every button
callback (``current_login``): a logged-out, removed or demoted user's open tab loses what their
login allowed on its next refresh.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import redis
import streamlit as st

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.redis_logins import LoginStore
from launcher.adapters.redis_store import SessionStore
from launcher.errors import LauncherError
from launcher.logs import event
from launcher.models import Actor, Permission
from launcher.rbac import authorize
from launcher.report_service import ReportService
from launcher.service import LauncherService
from launcher.settings import Settings
from ui.auth import Resolved, resolve, shown_name

log = logging.getLogger("launcher.console")


@st.cache_resource
def get_service() -> LauncherService:
    """One service per console process, shared by every session and rerun (state lives in Redis)."""
    settings = Settings()
    return LauncherService(settings, SessionStore.from_settings(settings), CeleryDispatcher.from_settings(settings))


@st.cache_resource
def get_report_service() -> ReportService:
    """One report service per console process, over the same settings and Redis store as ``get_service``."""
    from launcher.bootstrap import build_report_service

    service = get_service()
    return build_report_service(service.settings, service.store)


def request_cookies() -> Mapping[str, str]:
    """The cookies of the browser this run serves (tests of the page scripts replace this one function)."""
    return st.context.cookies


def current_login(service: LauncherService) -> Resolved:
    """The console login and actor of this browser, checked against Redis and the role source now."""
    settings = service.settings
    try:
        resolved = resolve(settings, LoginStore(service.store.redis, settings), request_cookies())
    except redis.RedisError as exc:  # Redis down: nobody is logged in, rather than a traceback on the page
        log.warning("console.login_check_failed error=%s", type(exc).__name__)
        return Resolved()
    if resolved.revoked and resolved.login is not None:
        user = resolved.login.user
        event(log, "console.logout", user=shown_name(user), reason=resolved.revoked)
        with contextlib.suppress(LauncherError):
            service.store.record_event("logout", user=user, actor="console", reason=resolved.revoked)
    return resolved


def current_actor(service: LauncherService) -> Actor | None:
    return current_login(service).actor


def page_context(permission: Permission | None) -> tuple[LauncherService, Actor]:
    """For a page file: the service and the signed-in actor, who must hold ``permission``."""
    service = get_service()
    actor = current_actor(service)
    if actor is None or (permission is not None and not authorize(actor, permission)):
        st.error("You do not have access to this page.")
        st.stop()
    return service, actor


def allowed_actor(service: LauncherService, permission: Permission) -> Actor | None:
    """For a fragment rerun or a button callback: the actor now, if they still hold ``permission``."""
    actor = current_actor(service)
    return actor if actor is not None and authorize(actor, permission) else None
