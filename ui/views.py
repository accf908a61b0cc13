"""What the console's pages render. They call the launcher service; they hold no state of their own.

Everything a page shows is read from Redis through the service on each run, so reloads, new tabs
and console restarts lose nothing.
"""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from launcher.errors import LauncherError
from launcher.models import Actor, Permission, Reason, SessionStatus, utcnow
from launcher.service import LauncherService
from launcher.settings import Settings
from launcher.views import REASON_TEXT, SessionView
from ui.auth import csrf_token
from ui.context import allowed_actor
from ui.format import ago, audit_rows, session_rows

REFRESH = timedelta(seconds=2)


def _run(action, *args, **kwargs):
    """Call the service; show a launcher error to the person instead of a traceback."""
    try:
        return action(*args, **kwargs)
    except LauncherError as exc:
        st.session_state["flash"] = exc.user_message
        return None


def _act(service: LauncherService, permission: Permission, method: str, *args, **kwargs):
    """A button's action, run as the user this browser is logged in as now, not when the button was drawn."""
    actor = allowed_actor(service, permission)
    if actor is None:
        st.session_state["flash"] = "You are signed out, or your role no longer allows this."
        return None
    return _run(getattr(service, method), actor, *args, **kwargs)


def _current_or_rerun(service: LauncherService, permission: Permission) -> Actor:
    """For a fragment rerun: the user now; a logged-out or demoted user's page is redrawn from the top."""
    actor = allowed_actor(service, permission)
    if actor is None:
        st.rerun(scope="app")
    return actor


def _flash() -> None:
    message = st.session_state.pop("flash", None)
    if message:
        st.error(message)


# -- login ------------------------------------------------------------------------------------------


_SAME_TAB_LINK = (
    '<a href="{href}" class="nbl-link" style="display:inline-block;padding:.45rem 1rem;border-radius:.5rem;'
    'border:1px solid #ccc;text-decoration:none;{extra}">{label}</a>'
)


_LOGOUT_FORM = (
    '<form method="post" action="/logout" class="nbl-logout" style="margin:0">'
    '<input type="hidden" name="csrf" value="{token}">'
    '<button type="submit" style="padding:.45rem 1rem;border-radius:.5rem;border:1px solid #ccc;'
    'background:transparent;color:inherit;font:inherit;cursor:pointer">Log out</button></form>'
)


def login(settings: Settings, note: str = "") -> None:
    st.title("Research notebooks")
    if note:
        st.warning(note)
    st.write("Sign in to launch and manage your research notebooks.")
    # A plain link in both modes: /login shows the form, or (OIDC) sends the browser to the provider.
    primary = "background:#ff4b4b;color:white;border-color:#ff4b4b"
    st.html(_SAME_TAB_LINK.format(href="/login", label="Log in", extra=primary))


def logout_button(settings: Settings, login_id: str) -> None:
    """A POST form with the login's CSRF token: logging out deletes the login in Redis."""
    st.html(_LOGOUT_FORM.format(token=csrf_token(settings, login_id)))


# -- researcher -------------------------------------------------------------------------------------


def notebooks(service: LauncherService, actor: Actor) -> None:
    st.title("Research notebooks")
    st.caption(
        "JupyterLab in an isolated container: research data read-only at /data, your workspace in "
        "~/work, the research library importable, no network."
    )
    _notebooks_live(service)


@st.fragment(run_every=REFRESH)
def _notebooks_live(service: LauncherService) -> None:
    actor = _current_or_rerun(service, Permission.LAUNCH_NOTEBOOKS)
    _flash()
    view = _run(service.my_notebook, actor)
    if view is not None and view.live:
        _session_panel(service, view)
        _workspace(view)
        return
    if view is not None:
        _last_session_note(view)
        _workspace(view)
    _template_cards(service)


def _last_session_note(view: SessionView) -> None:
    if view.status == SessionStatus.ERROR:
        st.error(f"Your last notebook ({view.template.title}) ended with an error: {view.error or view.ended_because}")
    elif view.ended_because and view.ended_because != REASON_TEXT[Reason.USER]:
        st.info(f"Your last notebook ({view.template.title}) stopped because {view.ended_because}.")


def _workspace(view: SessionView) -> None:
    usage = view.workspace
    if usage is None or not usage.limit_bytes:
        return
    text = f"Workspace: {usage.used_bytes / 2**30:.2f} GB of {usage.limit_bytes / 2**30:.1f} GB"
    st.progress(min(1.0, usage.fraction), text=text)
    if usage.over and not usage.enforced:
        st.error("Your workspace is over its quota: delete or move files before launching again.")
    elif view.workspace_warning:
        st.warning("Your workspace is almost full: when it is full, saving files in JupyterLab fails.")


def _template_cards(service: LauncherService) -> None:
    st.subheader("Start a notebook")
    templates = service.template_views()
    columns = st.columns(max(1, len(templates)))
    for column, info in zip(columns, templates, strict=False):
        with column.container(border=True):
            st.markdown(f"**{info.title}**")
            st.write(info.description)
            if info.data:
                st.caption(f"Reads: {info.data}")
            st.button(
                "Launch",
                key=f"launch-{info.name}",
                type="primary",
                on_click=_act,
                args=(service, Permission.LAUNCH_NOTEBOOKS, "launch", info.name),
            )


def _session_panel(service: LauncherService, view: SessionView) -> None:
    st.subheader(view.template.title)
    if view.status == SessionStatus.QUEUED:
        if view.no_worker_yet:
            st.error(
                f"No worker has picked up this launch for {view.waited.total_seconds():.0f} s: the worker for host "
                f"'{view.host}' may be down. Ask an operator, or cancel and try again later."
            )
        else:
            st.info(f"Queued (position {view.queue_position or 1} on host {view.host}), waiting for a worker…")
    elif view.status == SessionStatus.STARTING:
        st.info(f"Starting: {view.phase or 'preparing'}…")
    elif view.status == SessionStatus.STOPPING:
        st.info("Stopping…")
    elif view.status == SessionStatus.RUNNING:
        st.success("Running")
        if view.open_url:
            st.link_button("Open JupyterLab", view.open_url, type="primary")
        now = utcnow()
        a, b, c = st.columns(3)
        a.metric("Started", view.started_at.strftime("%H:%M UTC") if view.started_at else "-")
        b.metric("Last activity", f"{ago(now - view.last_activity_at)} ago" if view.last_activity_at else "-")
        c.metric("Stops when idle in", ago(view.time_left))
        if view.reap_warning:
            st.warning(f"This notebook will be stopped in {ago(view.time_left)}. Keep it running?")
            st.button(
                "Keep running",
                key="keepalive",
                on_click=_act,
                args=(service, Permission.LAUNCH_NOTEBOOKS, "keep_alive"),
            )
    if view.status != SessionStatus.STOPPING:
        label = "Cancel" if view.status == SessionStatus.QUEUED else "Stop"
        st.button(label, key="stop", on_click=_act, args=(service, Permission.LAUNCH_NOTEBOOKS, "stop"))


# -- admin ------------------------------------------------------------------------------------------


def admin(service: LauncherService, actor: Actor) -> None:
    st.title("Notebook sessions")
    _admin_sessions(service)
    st.subheader("Audit trail")
    who = st.text_input("Filter by user", key="audit-user").strip().lower() or None
    events = _run(service.audit, actor, user=who, limit=200) or []
    st.dataframe(audit_rows(events), hide_index=True, use_container_width=True)


@st.fragment(run_every=REFRESH)
def _admin_sessions(service: LauncherService) -> None:
    actor = _current_or_rerun(service, Permission.MANAGE_NOTEBOOKS)
    _flash()
    sessions = _run(service.session_views, actor) or []
    st.caption(f"{len(sessions)} live of at most {service.settings.max_sessions}")
    st.dataframe(session_rows(sessions), hide_index=True, use_container_width=True)
    if sessions:
        choice = st.selectbox(
            "Session",
            [s.id for s in sessions],
            key="stop-one",
            format_func=lambda sid: next(
                f"{s.user} · {s.template.title} · {s.status.value}" for s in sessions if s.id == sid
            ),
        )
        st.button(
            "Stop this session",
            key="stop-one-button",
            on_click=_act,
            args=(service, Permission.MANAGE_NOTEBOOKS, "stop"),
            kwargs={"session_id": choice},
        )
    _stop_all(service, actor, len(sessions))


def _ask_stop_all() -> None:
    st.session_state["confirm-stop-all"] = True


def _do_stop_all(service: LauncherService) -> None:
    st.session_state["confirm-stop-all"] = False
    batch = _act(service, Permission.MANAGE_NOTEBOOKS, "stop_all")
    if batch:
        st.session_state["stop-all-batch"] = batch


def _stop_all(service: LauncherService, actor: Actor, live: int) -> None:
    if st.session_state.get("confirm-stop-all"):
        st.warning(f"Stop all {live} live sessions? Their users lose unsaved work.")
        yes, no = st.columns(2)
        yes.button("Yes, stop all", key="stop-all-yes", type="primary", on_click=_do_stop_all, args=(service,))
        no.button("Cancel", key="stop-all-no", on_click=lambda: st.session_state.update({"confirm-stop-all": False}))
    else:
        st.button("Stop all sessions…", key="stop-all", disabled=live == 0, on_click=_ask_stop_all)
    batch = st.session_state.get("stop-all-batch")
    progress = _run(service.stop_all_progress, actor, batch) if batch else None
    if progress is not None:
        if progress.finished:
            st.success(f"Stop all finished: {progress.done} of {progress.total} stopped.")
        else:
            fraction = progress.done / progress.total if progress.total else 0.0
            st.progress(fraction, text=f"Stopping all sessions: {progress.done} of {progress.total}")


# -- viewer -----------------------------------------------------------------------------------------


def viewer(service: LauncherService, actor: Actor) -> None:
    st.title("Research notebooks")
    st.info("Your role (viewer) may not launch notebooks. Ask an administrator for the researcher role.")
