"""What the console's pages render. They call the launcher service; they hold no state of their own.

Everything a page shows is read from Redis through the service on each run, so reloads, new tabs
and console restarts lose nothing. What this browser tab alone remembers (an error not yet dismissed,
a stop being confirmed) lives in ``st.session_state``.

Polling: while a launch or a stop is in flight the panel refreshes every ``FAST`` (each change shows
within half a second); otherwise every ``SLOW``. A fragment's interval is fixed when it is drawn, so
there are two fragments, and a fragment that sees the other kind of state redraws the page once.
"""

from __future__ import annotations

import csv
import html
import io
import os
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

from launcher.errors import Conflict, LauncherError, LimitReached
from launcher.models import (
    PENDING_STATUSES,
    Actor,
    HostInfo,
    HostState,
    Permission,
    Reason,
    Session,
    SessionStatus,
    WorkspaceUsage,
    utcnow,
)
from launcher.service import LauncherService
from launcher.settings import Settings
from launcher.views import PHASES, REASON_TEXT, SessionView, progress, scrub
from ui.auth import csrf_token
from ui.context import allowed_actor
from ui.format import ago, audit_rows, plural, session_rows

FAST = timedelta(seconds=0.3)
SLOW = timedelta(seconds=5)
ADMIN_REFRESH = timedelta(seconds=3)
IN_FLIGHT = frozenset({SessionStatus.WAITING, SessionStatus.QUEUED, SessionStatus.STARTING, SessionStatus.STOPPING})


# -- time in the browser's zone -------------------------------------------------------------------------


def browser_zone() -> ZoneInfo | None:
    """The browser's time zone (``st.context.timezone``), or None when it did not say."""
    name = st.context.timezone
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local(when: datetime | None, with_date: bool = False) -> str:
    """A time as the person reads it: in their browser's zone (UTC when unknown), with the zone's name."""
    if when is None:
        return "-"
    zone = browser_zone()
    shown = when.astimezone(zone) if zone else when
    label = shown.tzname() if zone else "UTC"
    return shown.strftime(f"{'%Y-%m-%d ' if with_date else ''}%H:%M {label}")


# -- errors that stay until dismissed or resolved -------------------------------------------------------


def _words(exc: LauncherError) -> str:
    """A launcher error worded for the person who clicked (no internal ids, not their own name back)."""
    message = exc.user_message
    one_at_a_time = isinstance(exc, LimitReached) and message.startswith("you may run 1 session at once")
    if one_at_a_time or (
        isinstance(exc, Conflict) and ("already has a live notebook" in message or "launch in progress" in message)
    ):
        return "You already have a notebook starting or running (perhaps from another tab): it is shown below."
    return exc.user_message[:1].upper() + exc.user_message[1:]


def _error(message: str) -> None:
    errors: list[str] = st.session_state.setdefault("errors", [])
    if message not in errors:
        errors.append(message)


def _run(action, *args, **kwargs):
    """Call the service; show a launcher error to the person (until dismissed) instead of a traceback."""
    try:
        return action(*args, **kwargs)
    except LauncherError as exc:
        _error(_words(exc))
        return None


def _act(service: LauncherService, permission: Permission, method: str, *args, **kwargs):
    """A button's action, run as the user this browser is logged in as now, not when the button was drawn."""
    actor = allowed_actor(service, permission)
    if actor is None:
        _error("You are signed out, or your role no longer allows this.")
        return None
    return _run(getattr(service, method), actor, *args, **kwargs)


def _current_or_rerun(service: LauncherService, permission: Permission) -> Actor:
    """For a fragment rerun: the user now; a logged-out or demoted user's page is redrawn from the top."""
    actor = allowed_actor(service, permission)
    if actor is None:
        st.rerun(scope="app")
    return actor


def _dismiss(message: str) -> None:
    errors: list[str] = st.session_state.get("errors", [])
    if message in errors:
        errors.remove(message)


def _errors(resolved_key: str) -> None:
    """The errors of this tab, each with a Dismiss button; they go away by themselves when what they
    were about changed (``resolved_key``: the session, and whether it is live)."""
    if st.session_state.get("errors-key") != resolved_key:
        st.session_state["errors-key"] = resolved_key
        if st.session_state.pop("errors-hold", False):
            pass  # raised while the state was changing: kept one more change
        else:
            st.session_state["errors"] = []
    for i, message in enumerate(list(st.session_state.get("errors", []))):
        text, button = st.columns([5, 1], vertical_alignment="center")
        text.error(message, icon=":material/error:")
        button.button("Dismiss", key=f"dismiss-{i}", on_click=_dismiss, args=(message,))


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
    sessions: list[SessionView] = _run(service.my_sessions, actor) or []
    if any(s.status in IN_FLIGHT for s in sessions) or st.session_state.get("launching"):
        _notebooks_fast(service)
    else:
        _notebooks_slow(service)


@st.fragment(run_every=FAST)
def _notebooks_fast(service: LauncherService) -> None:
    _notebooks_live(service, fast=True)


@st.fragment(run_every=SLOW)
def _notebooks_slow(service: LauncherService) -> None:
    _notebooks_live(service, fast=False)


def _notebooks_live(service: LauncherService, fast: bool) -> None:
    actor = _current_or_rerun(service, Permission.LAUNCH_NOTEBOOKS)
    sessions: list[SessionView] = _run(service.my_sessions, actor) or []  # live ones, oldest first
    view = sessions[-1] if sessions else _run(service.my_notebook, actor)  # else the latest ended one
    in_flight = any(s.status in IN_FLIGHT for s in sessions)
    launching = st.session_state.get("launching")
    if launching and (in_flight or view is None or view.id == launching or any(s.id == launching for s in sessions)):
        st.session_state.pop("launching", None)  # the launch shows in the record now (or it was refused)
        launching = None
    if in_flight != fast and not launching:
        st.rerun(scope="app")  # the other polling speed
    if sessions:
        _errors(",".join(s.id for s in sessions) + ":live")
    else:
        _errors(f"{view.id}:ended" if view is not None else "none")
    if sessions:
        many = len(sessions) > 1
        for s in sessions:
            with st.container(key=f"panel-{s.id}", border=many):
                _session_panel(service, s, many)
        _workspace(view)
        if len(sessions) < service.settings.max_sessions_per_user:
            _another(service, actor, sessions)
        if any(s.status == SessionStatus.RUNNING for s in sessions):
            _files(service, actor)
        return
    if view is not None:
        _last_session_note(service, actor, view)
        _relaunch_exactly(service, actor, view)
        _workspace(view)
    _template_cards(service, actor)
    if view is not None:
        _files(service, actor)


def _another(service: LauncherService, actor: Actor, sessions: list[SessionView]) -> None:
    """Below a user's live sessions, when they may run more: the cards, or why not yet."""
    limit = service.settings.max_sessions_per_user
    if any(s.status in PENDING_STATUSES for s in sessions):
        st.caption(
            f"You may run {plural(limit, 'notebook')} at once: you can start another one when this launch "
            "has finished starting."
        )
        return
    _template_cards(
        service,
        actor,
        heading=f"Start another notebook ({len(sessions)} of your {limit} in use)",
        taken={s.name for s in sessions},
    )


def _told(view_id: str) -> None:
    st.session_state.setdefault("told", set()).add(view_id)


def _last_session_note(service: LauncherService, actor: Actor, view: SessionView) -> None:
    """How the last session ended, told once (per user, across tabs), kept in this tab until dismissed."""
    shown: dict[str, str] = st.session_state.setdefault("notice", {})
    told = view.id in shown or view.id in st.session_state.get("told", set())
    if not told and _run(service.unseen_end, actor, view):
        shown[view.id] = "show"
    if view.id not in shown:
        return
    box = st.container(border=True, key="last-session")
    when = local(view.stopped_at, with_date=True)
    if view.status == SessionStatus.ERROR:
        reason = (view.error or view.ended_because).rstrip(".")
        if view.start_log:  # its log is right here (and the container is gone): no need to ask for docker logs
            reason = reason.split("; an operator can read its log")[0]
        box.error(
            f"Your {view.template.title} notebook did not start ({when}): {reason}.",
            icon=":material/error:",
        )
        if view.start_log:
            box.caption("The last lines it printed while starting (secrets hidden):")
            box.code(view.start_log, language=None)
        box.caption("Launch again below; if it fails again, send this message to an administrator.")
    elif view.ended_because and view.ended_because != REASON_TEXT[Reason.USER]:
        box.info(f"Your {view.template.title} notebook stopped at {when} because {view.ended_because}.")
        box.caption("Files you saved in ~/work are kept; start a notebook again below.")
    else:
        shown.pop(view.id, None)
        return
    box.button("Dismiss", key="dismiss-notice", on_click=lambda: (shown.pop(view.id, None), _told(view.id)))


def _relaunch_exactly(service: LauncherService, actor: Actor, view: SessionView) -> None:
    """An ended session with a complete record: start a new one on exactly what it ran on (LauncherService.relaunch)."""
    record = view.record
    if view.status.live or not record.get("image_id", "").startswith("sha256:") or not record.get("template_sha256"):
        return
    session: Session | None = _run(service.get, actor, view.id)
    if session is None or not session.snapshot:
        return
    with st.container(key="relaunch-exactly"):
        st.caption(
            f"Your last notebook ({view.template.title}, {local(view.stopped_at, with_date=True)}) can be started "
            f"again on exactly what it ran on: image {record['image_id'][7:19]}, data snapshot {session.snapshot}, "
            "the same template version and profile."
        )
        st.button("Relaunch exactly", key="relaunch", on_click=_relaunch, args=(service, view.id))


def _relaunch(service: LauncherService, session_id: str) -> None:
    st.session_state["errors"] = []
    st.session_state["errors-hold"] = True
    session = _act(service, Permission.LAUNCH_NOTEBOOKS, "relaunch", session_id)
    if session is not None:
        st.session_state["launching"] = session.id


def _workspace(view: SessionView) -> None:
    usage = view.workspace
    if usage is None or not usage.limit_bytes:
        return
    with st.container(key="workspace"):  # its own block: never a reused launch progress bar (no flicker)
        _workspace_bar(view, usage)


def _workspace_bar(view: SessionView, usage: WorkspaceUsage) -> None:
    text = f"Workspace: {usage.used_bytes / 2**30:.2f} GB of {usage.limit_bytes / 2**30:.1f} GB"
    st.progress(min(1.0, usage.fraction), text=text)
    if usage.over and not usage.enforced:
        st.error("Your workspace is over its quota: delete or move files before launching again.")
    elif view.workspace_warning:
        st.warning("Your workspace is almost full: when it is full, saving files in JupyterLab fails.")


_FILE_ROW = '<tr><td><a href="/_nbl/files?{query}" download>{name}</a></td><td>{size}</td><td>{when}</td></tr>'
_FILE_TABLE = (
    '<table class="nbl-files" style="width:100%;border-collapse:collapse;font-size:.9rem">'
    '<tr style="text-align:left"><th>File</th><th>Size</th><th>Modified</th></tr>{rows}</table>'
)
FILES_SHOWN = 50


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _files(service: LauncherService, actor: Actor) -> None:
    """The user's workspace files with download links (served by the console's /_nbl/files route)."""
    from urllib.parse import urlencode

    from ui import workspace

    with st.expander("Your files in ~/work", expanded=False):
        root = workspace.workspace_root(service.settings, actor.name)
        if root is None:
            st.caption(
                "Your workspace is on the notebook host, not on this console's machine: open JupyterLab to "
                "see and download your files (right-click a file, Download)."
            )
            return
        entries, more = workspace.list_files(root)
        if not entries:
            st.caption("Your workspace is empty.")
            return
        rows = "".join(
            _FILE_ROW.format(
                query=html.escape(urlencode({"path": e.path})),
                name=html.escape(e.path),
                size=_size(e.size),
                when=html.escape(local(e.modified, with_date=True)),
            )
            for e in entries[:FILES_SHOWN]
        )
        st.html(_FILE_TABLE.format(rows=rows))
        hidden = len(entries) - FILES_SHOWN
        if hidden > 0 or more:
            st.caption(f"…and {'more than ' if more else ''}{plural(max(hidden, 0), 'more file')} not listed here.")
        st.html('<a href="/_nbl/files?archive=1" download>Download the whole workspace (.zip)</a>')


def _launch(service: LauncherService, name: str) -> None:
    """A card's Launch: with the profile and the name picked on that card (when the card offers them)."""
    st.session_state["errors"] = []
    st.session_state["errors-hold"] = True
    profile = st.session_state.get(f"profile-{name}") or None
    label = str(st.session_state.get(f"name-{name}") or "").strip() or None
    session = _act(service, Permission.LAUNCH_NOTEBOOKS, "launch", name, profile=profile, name=label)
    if session is not None:
        st.session_state["launching"] = session.id
        _run(service.store.mark_notice, session.user, "live", session.id)


def profile_label(settings: Settings, name: str) -> str:
    """A profile as the picker shows it: its name and its description (``large · 4 CPUs, 16 GB``)."""
    spec = settings.profiles.get(name)
    return f"{name} · {spec.description}" if spec is not None and spec.description else name


def default_session_name(template: str, taken: set[str]) -> str:
    """The name a card suggests: the template's, with '-' for '_', numbered when a live session has it."""
    base = template.replace("_", "-")[:37]
    if base not in taken:
        return base
    return next(f"{base}-{i}" for i in range(2, len(taken) + 3) if f"{base}-{i}" not in taken)


def _template_cards(
    service: LauncherService, actor: Actor, heading: str = "Start a notebook", taken: set[str] | None = None
) -> None:
    st.subheader(heading, anchor=False)
    templates = service.template_views()
    if not templates:
        st.info("No notebook templates are installed yet. Ask an administrator.")
        return
    profiles: list[str] = _run(service.profiles_for, actor) or []
    if not profiles:
        st.info("No resource profile is open to your role on this installation. Ask an administrator.")
        return
    named = service.settings.max_sessions_per_user > 1
    columns = st.columns(max(1, len(templates)))
    for column, info in zip(columns, templates, strict=False):
        with column.container(border=True):
            st.markdown(f"**{info.title}**")
            st.write(info.description)
            if info.data:
                st.caption(f"Reads: {info.data}")
            if len(profiles) > 1:  # the default first; one profile only: nothing to pick
                st.selectbox(
                    "Resources",
                    profiles,
                    key=f"profile-{info.name}",
                    format_func=lambda n: profile_label(service.settings, n),
                    help="What this notebook reserves and may use: CPUs and memory.",
                )
            if named:
                st.text_input(
                    "Name",
                    value=default_session_name(info.name, taken or set()),
                    key=f"name-{info.name}",
                    max_chars=40,
                    help="To tell your notebooks apart: lowercase letters, digits, '-' and '_'.",
                )
            st.button("Launch", key=f"launch-{info.name}", type="primary", on_click=_launch, args=(service, info.name))


def _phase_list(step: int) -> str:
    marks = []
    for i, name in enumerate(PHASES):
        mark = ":material/check_circle:" if i < step else ":material/radio_button_unchecked:"
        if i == step:
            mark = ":material/check_circle:" if step == len(PHASES) - 1 else ":material/pending:"
        marks.append(f"{mark} {'**' + name + '**' if i == step else name}")
    return " &nbsp; ".join(marks)


def _key(base: str, view: SessionView, many: bool) -> str:
    """A widget key of one session's panel: the plain key when the user has one session, else per session."""
    return f"{base}-{view.id}" if many else base


def session_line(view: SessionView) -> str:
    """One session in a line: its name, template, profile and resources, and its state in words."""
    resources = f"{view.cpus:g} CPU{'s' if view.cpus != 1 else ''}, {view.mem_bytes / 2**30:g} GB"
    return f"**{view.name}** · {view.template.title} · {view.profile} ({resources}) · {view.state_text}"


def _host_down_note(service: LauncherService, view: SessionView) -> None:
    after = ago(timedelta(seconds=service.settings.host_down_after_s))
    st.warning(
        f"**Host unreachable.** The Docker host this notebook was placed on ({view.host}) has not answered the "
        f"launcher for more than {after}, so what the notebook is doing is not known now: it may still be running "
        "there, but opening it may fail and this page cannot show its activity. It is shown as usual again as soon "
        "as the host answers. Stop asks that host to stop it: it does so once it answers again.",
        icon=":material/cloud_off:",
    )


def _waiting_panel(service: LauncherService, view: SessionView, now: datetime) -> None:
    """A launch in the admission queue: its place, the estimate, how long it has waited."""
    p = progress(view, now, service.typical_launch_time())
    estimate = _run(service.wait_estimate, view.queue_position)
    guess = f"about {ago(estimate)} more" if estimate else "no estimate yet"
    st.progress(p.fraction, text=f"{p.label}: {guess}; waiting for {ago(p.elapsed)} so far")
    st.markdown(_phase_list(p.step))
    deadline = ago(timedelta(seconds=service.settings.queue_wait_deadline_s))
    st.caption(
        f"Every notebook host is full for the {view.profile} profile now. Your launch starts as soon as room "
        f"frees, in order of arrival; you may leave this page meanwhile. It waits at most {deadline}."
    )


def _session_panel(service: LauncherService, view: SessionView, many: bool = False) -> None:
    st.subheader(view.name if many else view.template.title, anchor=False)
    st.markdown(session_line(view))
    now = utcnow()
    unreachable = view.host_down and view.status != SessionStatus.WAITING
    if unreachable:
        _host_down_note(service, view)
        if view.open_url:
            st.link_button("Open JupyterLab", view.open_url)
    elif view.status == SessionStatus.WAITING:
        _waiting_panel(service, view, now)
    elif view.status in (SessionStatus.QUEUED, SessionStatus.STARTING):
        p = progress(view, now, service.typical_launch_time())
        usual = f"; launches usually take about {ago(p.typical)}" if p.typical else ""
        st.progress(p.fraction, text=f"{p.label}… {ago(p.elapsed)} so far{usual}")
        st.markdown(_phase_list(p.step))
        if view.no_worker_yet:
            st.error(
                f"No worker has picked up this launch for {view.waited.total_seconds():.0f} s: the worker for this "
                "host may be down. Ask an administrator, or cancel and try again later."
            )
    elif view.status == SessionStatus.STOPPING:
        st.progress(0.5, text="Stopping… the container is being removed; your saved files stay in ~/work.")
    elif view.status == SessionStatus.RUNNING:
        st.progress(1.0, text=f"Ready: started in {ago(view.started_at - view.created_at) if view.started_at else '-'}")
        if view.open_url:
            st.link_button("Open JupyterLab", view.open_url, type="primary")
            st.caption(f"Opens {view.template.name}.ipynb in JupyterLab, in a new tab.")
        a, b, c = st.columns(3)
        a.metric("Started", local(view.started_at))
        b.metric(
            "Last activity",
            f"{ago(now - view.last_activity_at)} ago" if view.last_activity_at else "-",
            help=(
                f"Measured by the notebook host every {ago(timedelta(seconds=service.settings.heartbeat_interval_s))}: "
                "what you did in JupyterLab just now can take that long to show here."
            ),
        )
        c.metric("Stops when idle in", ago(view.time_left))
        if view.reap_warning:
            st.warning(
                f"This notebook will be stopped in {ago(view.time_left)} because it looks idle. "
                "Unsaved work in JupyterLab would be lost. Keep it running?",
                icon=":material/timer:",
            )
            st.button(
                "Keep running",
                key=_key("keepalive", view, many),
                type="primary",
                on_click=_act,
                args=(service, Permission.LAUNCH_NOTEBOOKS, "keep_alive"),
                kwargs={"session_id": view.id},
            )
        if view.record:  # the record (launcher.provenance): what to cite a result from this session with
            with st.expander("What this session runs on", expanded=False):
                st.caption(
                    "Recorded when it started; also in ~/work/.launcher/" + view.id + ".json. "
                    "Cite a result with it (docs/research.md)."
                )
                st.code(
                    "\n".join(f"{k}: {v}" for k, v in view.record.items() if k not in ("session", "user")),
                    language=None,
                )
    if view.status == SessionStatus.STOPPING:
        return
    pending = view.status in (SessionStatus.WAITING, SessionStatus.QUEUED)  # nothing has started yet
    if st.session_state.get("confirm-stop") == view.id:
        if pending:
            st.warning(
                "Cancel this launch? It leaves the queue and nothing is lost; launching again later starts at "
                "the back of the queue.",
                icon=":material/warning:",
            )
            yes_label, no_label = "Yes, cancel it", "Keep waiting"
        else:
            st.warning(
                "Stop this notebook? Its kernels end and anything not saved in JupyterLab is lost; files saved "
                "in ~/work are kept. An open JupyterLab tab then shows that the notebook has stopped.",
                icon=":material/warning:",
            )
            yes_label, no_label = "Yes, stop it", "Keep it running"
        yes, no, _ = st.columns([1, 1, 4])
        yes.button(
            yes_label,
            key=_key("stop-yes", view, many),
            type="primary",
            on_click=_confirmed_stop,
            args=(service, view.id),
        )
        no.button(
            no_label, key=_key("stop-no", view, many), on_click=lambda: st.session_state.pop("confirm-stop", None)
        )
    else:
        st.button(
            "Cancel…" if pending else "Stop…",
            key=_key("stop", view, many),
            on_click=lambda: st.session_state.update({"confirm-stop": view.id}),
        )


def _confirmed_stop(service: LauncherService, session_id: str) -> None:
    st.session_state.pop("confirm-stop", None)
    _act(service, Permission.LAUNCH_NOTEBOOKS, "stop", session_id=session_id)


# -- admin ------------------------------------------------------------------------------------------

AUDIT_SPANS = {
    "Last hour": timedelta(hours=1),
    "Last day": timedelta(days=1),
    "Last week": timedelta(days=7),
    "All": None,
}


def admin(service: LauncherService, actor: Actor) -> None:
    st.title("Notebook sessions")
    flower = f"http://{service.settings.flower_listen}"
    st.caption(f"Task queue: [Flower]({flower}) (operator login) shows the Celery workers and their tasks.")
    _admin_sessions(service)
    _host_load(service)
    _hosts(service)
    _queue(service)
    _failed_starts(service, actor)
    st.subheader("Audit trail")
    who, why, span = st.columns(3)
    user = who.text_input("User", key="audit-user", placeholder="any user").strip().lower() or None
    reasons = why.multiselect("Reason", [r.value for r in Reason], key="audit-reason", placeholder="any reason")
    window = span.selectbox("Time", list(AUDIT_SPANS), index=1, key="audit-span")
    _audit(service, user, tuple(reasons), window)


@st.fragment(run_every=ADMIN_REFRESH)
def _audit(service: LauncherService, user: str | None, reasons: tuple[str, ...], window: str) -> None:
    actor = _current_or_rerun(service, Permission.MANAGE_NOTEBOOKS)
    events = _run(service.audit, actor, user=user, limit=500) or []
    since = AUDIT_SPANS.get(window)
    if since is not None:
        events = [e for e in events if e.time >= utcnow() - since]
    if reasons:
        events = [e for e in events if e.reason in reasons]
    if not events:
        st.info("No audit events match these filters.")
        return
    rows = audit_rows(events)
    zone = browser_zone()
    for row, e in zip(rows, events, strict=True):
        row["time"] = (e.time.astimezone(zone) if zone else e.time).strftime("%Y-%m-%d %H:%M:%S")
    st.caption(f"{plural(len(rows), 'event')}, newest first; times in {zone.key if zone else 'UTC'}")
    st.dataframe(rows, hide_index=True, use_container_width=True)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    st.download_button("Download CSV", out.getvalue(), file_name="notebook-audit.csv", mime="text/csv", key="audit-csv")


def _host_load(service: LauncherService) -> None:
    """The load of the machine the console runs on (the Docker host too in a one-host installation)."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return
    cores = os.cpu_count() or 1
    where = (
        "this host (the console and the notebooks share it)"
        if service.settings.workspaces_dir.is_dir()
        else "the console's host (notebooks run elsewhere)"
    )
    st.caption(f"Load on {where}: {one:.2f} (1 min), {five:.2f} (5 min) on {plural(cores, 'core')}.")


def _failed_starts(service: LauncherService, actor: Actor) -> None:
    """The recent failed starts with their reason and start log (secrets hidden)."""
    recent = _run(service.list_sessions, actor, live_only=False) or []
    failed = [s for s in recent if s.status == SessionStatus.ERROR][:5]
    if not failed:
        return
    st.subheader("Recent failed starts")
    for s in failed:
        with st.expander(f"{s.user} · {s.template} · {local(s.stopped_at, with_date=True)}: {s.error or 'failed'}"):
            if s.start_log:
                st.code(scrub(s.start_log), language=None)
            else:
                st.caption("The container printed nothing (it may not have been created).")


@st.fragment(run_every=ADMIN_REFRESH)
def _admin_sessions(service: LauncherService) -> None:
    actor = _current_or_rerun(service, Permission.MANAGE_NOTEBOOKS)
    _errors("admin")
    sessions = _run(service.session_views, actor) or []
    st.caption(f"{plural(len(sessions), 'live session')} of at most {service.settings.max_sessions}")
    if sessions:
        zone = browser_zone()
        rows = session_rows(sessions)
        for row, s in zip(rows, sessions, strict=True):
            for key, when in (("started", s.started_at), ("last activity", s.last_activity_at)):
                row[key] = (when.astimezone(zone) if zone else when).strftime("%H:%M:%S") if when else "-"
        _resource_columns(service, sessions, rows)
        st.dataframe(rows, hide_index=True, use_container_width=True)
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
    else:
        st.info("No notebook is running or starting.")
    _stop_all(service, actor, len(sessions))


def _resource_columns(service: LauncherService, sessions: list[SessionView], rows: list[dict[str, Any]]) -> None:
    """"CPU %" and "Memory" per session, as its host's last heartbeat measured them (empty when unknown)."""
    from launcher.adapters.redis_stats import StatsStore

    try:
        known = StatsStore(service.store.redis, service.settings).get_many(s.id for s in sessions)
    except Exception:  # noqa: BLE001 - figures for display only: the table shows without them
        known = {}
    for row, s in zip(rows, sessions, strict=True):
        stats = known.get(s.id)
        cpu = stats.cpu_percent if stats else None
        mem = stats.mem_bytes if stats else None
        limit = stats.mem_limit_bytes if stats else None
        row["CPU %"] = f"{cpu:.1f}" if cpu is not None else ""
        row["Memory"] = "" if mem is None else _size(mem) + (f" of {_size(limit)}" if limit else "")


def _ask_stop_all() -> None:
    st.session_state["confirm-stop-all"] = True


def _do_stop_all(service: LauncherService) -> None:
    st.session_state["confirm-stop-all"] = False
    batch = _act(service, Permission.MANAGE_NOTEBOOKS, "stop_all")
    if batch:
        st.session_state["stop-all-batch"] = batch


def _stop_all(service: LauncherService, actor: Actor, live: int) -> None:
    if st.session_state.get("confirm-stop-all") and live:
        which = "the 1 live session" if live == 1 else f"all {live} live sessions"
        st.warning(f"Stop {which}? Their users lose unsaved work; files saved in ~/work are kept.")
        yes, no = st.columns(2)
        yes.button("Yes, stop all", key="stop-all-yes", type="primary", on_click=_do_stop_all, args=(service,))
        no.button("Cancel", key="stop-all-no", on_click=lambda: st.session_state.update({"confirm-stop-all": False}))
    elif live:
        st.button("Stop all sessions…", key="stop-all", on_click=_ask_stop_all)
    batch = st.session_state.get("stop-all-batch")
    progress_ = _run(service.stop_all_progress, actor, batch) if batch else None
    if progress_ is not None:
        if progress_.finished:
            st.success(f"Stop all finished: {progress_.done} of {plural(progress_.total, 'session')} stopped.")
        else:
            fraction = progress_.done / progress_.total if progress_.total else 0.0
            st.progress(fraction, text=f"Stopping all sessions: {progress_.done} of {progress_.total}")


# -- capacity: hosts and the admission queue (admins) -------------------------------------------------

QUEUE_SHOWN = 50  # queue entries listed with a Remove button (the counts cover the whole queue)


def launches(count: int) -> str:
    """``1 launch``, ``2 launches``."""
    return f"{count} launch" if count == 1 else f"{count} launches"


def seen(host: HostInfo, now: datetime) -> str:
    """When a host last announced itself, in words (its worker stopped on purpose: it said so)."""
    if host.seen_at is None or host.seen_at.timestamp() <= 0:
        return "worker stopped"
    return f"{ago(max(now - host.seen_at, timedelta(0)))} ago"


def host_rows(hosts: list[HostInfo], now: datetime) -> list[dict[str, Any]]:
    """The admin's hosts table: state, sessions against the cap, what is reserved against what it offers."""
    gib = 2**30
    return [
        {
            "host": h.name,
            "state": f"{h.state.value} (drained)" if h.drained and h.state == HostState.DOWN else h.state.value,
            "sessions": f"{h.sessions} of {h.max_sessions}",
            "CPUs used": f"{h.used_cpus:g} of {h.cpus:g}",
            "memory used (GiB)": f"{h.used_mem_bytes / gib:.1f} of {h.mem_bytes / gib:.1f}",
            "last seen": seen(h, now),
        }
        for h in hosts
    ]


def hosts_summary(hosts: list[HostInfo]) -> str:
    """``2 hosts: 1 up, 1 draining`` (only the states present)."""
    states = [(s, sum(1 for h in hosts if h.state == s)) for s in HostState]
    parts = ", ".join(f"{n} {s.value}" for s, n in states if n)
    return f"{plural(len(hosts), 'host')}: {parts}"


def queue_summary(stats: dict[str, float], depth: int) -> str:
    """The queue in a sentence: how many wait, the oldest, what recent admissions waited."""
    if depth:
        now = f"{launches(depth)} waiting for room; the oldest for {ago(timedelta(seconds=stats['oldest_wait_s']))}."
    else:
        now = "No launch is waiting for room."
    admitted = int(stats.get("admissions", 0))
    if not admitted:
        return f"{now} No launch has been admitted yet."
    if stats.get("recent_wait_max_s", 0) < 1:
        recent = " Recent launches found room at once."
    else:
        recent = (
            f" Recent launches waited {ago(timedelta(seconds=stats['recent_wait_p50_s']))} (median), "
            f"at most {ago(timedelta(seconds=stats['recent_wait_max_s']))}."
        )
    return f"{now}{recent} {plural(admitted, 'admission')} so far."


@st.fragment(run_every=ADMIN_REFRESH)
def _hosts(service: LauncherService) -> None:
    actor = _current_or_rerun(service, Permission.MANAGE_NOTEBOOKS)
    st.subheader("Hosts", anchor=False)
    hosts: list[HostInfo] | None = _run(service.hosts, actor)
    if hosts is None:
        return
    if not hosts:
        st.info(
            "No Docker host has registered: is a worker running? Each host's worker announces itself every "
            f"{ago(timedelta(seconds=service.settings.host_beacon_interval_s))} once it runs.",
            icon=":material/dns:",
        )
        return
    down = ago(timedelta(seconds=service.settings.host_down_after_s))
    st.caption(
        f"{hosts_summary(hosts)}. A host is down when its worker has not answered for {down}: its sessions show "
        "as unreachable and new launches go elsewhere. A draining host takes no new sessions; its sessions run out."
    )
    st.dataframe(host_rows(hosts, utcnow()), hide_index=True, use_container_width=True)
    per_row = 6
    for at in range(0, len(hosts), per_row):
        for column, h in zip(st.columns(per_row), hosts[at : at + per_row], strict=False):
            _drain_button(service, column, h)


def _drain_button(service: LauncherService, column: Any, h: HostInfo) -> None:
    column.button(
        f"{'Undrain' if h.drained else 'Drain'} {h.name}",
        key=f"drain-{h.name}",
        on_click=_act,
        args=(service, Permission.MANAGE_NOTEBOOKS, "drain", h.name, not h.drained),
        help="Take new sessions again" if h.drained else "No new sessions on this host; its sessions run out",
    )


def _confirmed_dequeue(service: LauncherService, session_id: str) -> None:
    st.session_state.pop("confirm-dequeue", None)
    _act(service, Permission.MANAGE_NOTEBOOKS, "stop", session_id=session_id)


@st.fragment(run_every=ADMIN_REFRESH)
def _queue(service: LauncherService) -> None:
    actor = _current_or_rerun(service, Permission.MANAGE_NOTEBOOKS)
    st.subheader("Queue", anchor=False)
    waiting: list[Session] | None = _run(service.queue, actor)
    stats = _run(service.queue_stats, actor)
    if waiting is None or stats is None:
        return
    st.caption(queue_summary(stats, len(waiting)))
    if not waiting:
        return
    now = utcnow()
    widths = [1, 2, 2, 2, 2, 2]
    for column, title in zip(st.columns(widths), ("#", "user", "name", "profile", "waiting for", ""), strict=True):
        column.markdown(f"**{title}**" if title else "")
    asked = st.session_state.get("confirm-dequeue")
    for place, s in enumerate(waiting[:QUEUE_SHOWN], start=1):
        cells = st.columns(widths, vertical_alignment="center")
        cells[0].write(str(place))
        cells[1].write(s.user)
        cells[2].write(s.label)
        cells[3].write(s.profile)
        cells[4].write(ago(max(now - s.status_since, timedelta(0))))
        if asked == s.id:
            yes, no = cells[5].columns(2)
            yes.button(
                "Remove", key=f"dequeue-yes-{s.id}", type="primary", on_click=_confirmed_dequeue, args=(service, s.id)
            )
            no.button("Keep", key=f"dequeue-no-{s.id}", on_click=lambda: st.session_state.pop("confirm-dequeue", None))
        else:
            cells[5].button(
                "Remove…",
                key=f"dequeue-{s.id}",
                on_click=lambda sid=s.id: st.session_state.update({"confirm-dequeue": sid}),
                help="Take this launch out of the queue (its user sees that an administrator stopped it)",
            )
    hidden = len(waiting) - QUEUE_SHOWN
    if hidden > 0:
        st.caption(f"…and {launches(hidden)} more, further back in the queue.")


# -- viewer -----------------------------------------------------------------------------------------


def viewer(service: LauncherService, actor: Actor) -> None:
    st.title("Research notebooks")
    st.info("Your role (viewer) may not launch notebooks. Ask an administrator for the researcher role.")
