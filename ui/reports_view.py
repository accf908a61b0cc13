"""The Reports page (issue 13): run a template unattended, its record, results, artifacts, failing cell and drift
verdict, Reproduce, two runs side by side, schedules.

Like ``ui.views`` it calls services only (``launcher.report_service.ReportService``) and keeps nothing of its own
but what this tab alone remembers (the run picked, errors not yet dismissed) in ``st.session_state``. Errors use the
Notebooks page's helpers (worded for people, until dismissed, never a traceback). Artifacts are served by the
console route ``/_nbl/reports/<run>/<path>`` (``ui/asgi.py``), the HTML rendering sandboxed.
"""

from __future__ import annotations

import html
import json
import math
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import streamlit as st

from launcher.errors import LauncherError
from launcher.models import Actor, Permission
from launcher.rbac import authorize
from launcher.report_service import ReportService
from launcher.reports import MAX_PARAM_CHARS, ParamValue, ReportRun, ReportSchedule, ReportStatus, describe_interval
from launcher.service import LauncherService
from ui import views
from ui.context import allowed_actor
from ui.format import ago

ACTIVE_REFRESH = timedelta(seconds=1)  # while a run is queued or running
IDLE_REFRESH = timedelta(seconds=10)
ARTIFACT_ROUTE = "/_nbl/reports"
# Every ASCII punctuation character is escaped: markdown links, images and emphasis, but also autolinks
# ("http://..."), e-mail links ("@"), entities ("&"), Streamlit's colours and icons (":red[...]", ":material/x:")
# and its LaTeX ("$").
_MARKDOWN_SPECIAL = string.punctuation

# -- pure helpers (no Streamlit) ---------------------------------------------------------------------


def artifact_url(run_id: str, path: str) -> str:
    """The console route serving one of a run's recorded artifacts."""
    return f"{ARTIFACT_ROUTE}/{run_id}/{quote(path, safe='/')}"


def plain(text: str) -> str:
    """Text a notebook or a parameter wrote, shown in markdown as itself (no links, images, emphasis, icons)."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


def plain_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows for ``st.table``, which renders every cell as markdown: each cell shown as itself."""
    return [{plain(str(k)): plain(shown(v)) for k, v in row.items()} for row in rows]


def shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested results as one level: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(value, dict):
        if not value and prefix:
            return {prefix: value}
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix or "results": value}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(type(a) is type(b) and a == b) or (shown(a) == shown(b))


def compare_rows(first: ReportRun, second: ReportRun) -> list[dict[str, str]]:
    """The two runs' results side by side: one row per flattened key, both values, rows that differ marked."""
    a, b = flatten(first.results), flatten(second.results)
    keys = list(a) + [k for k in b if k not in a]
    missing = "(none)"
    rows = []
    for key in keys:
        differs = key not in a or key not in b or not _same(a[key], b[key])
        rows.append(
            {
                "result": key,
                f"first ({first.id})": shown(a[key]) if key in a else missing,
                f"second ({second.id})": shown(b[key]) if key in b else missing,
                "differs": "≠ differs" if differs else "",
            }
        )
    return rows


def params_text(params: dict[str, ParamValue]) -> str:
    return ", ".join(f"{k}={shown(v)}" for k, v in params.items()) or "defaults"


def duration_text(run: ReportRun) -> str:
    seconds = run.duration_s
    return "-" if seconds is None else ago(timedelta(seconds=seconds))


def status_text(run: ReportRun) -> str:
    text = run.status.value
    if run.drift is not None:
        text += ", same" if run.drift.same else ", DRIFT"
    return text


def complete_record(record: dict[str, str]) -> bool:
    """What ``ReportService.reproduce`` needs: the image by ID and the template version."""
    return record.get("image_id", "").startswith("sha256:") and bool(record.get("template_sha256"))


def run_rows(runs: list[ReportRun], everyone: bool) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "status": status_text(r),
            "template": r.template,
            "duration": duration_text(r),
            "parameters": params_text(r.params),
            "requested by": r.requested_by,
            "when": views.local(r.created_at, with_date=True),
            "run": r.id + (f" (reproduces {r.reproduces})" if r.reproduces else ""),
        }
        if everyone:
            row = {"user": r.user, **row}
        rows.append(row)
    return rows


def run_label(run: ReportRun) -> str:
    return f"{run.template} · {run.status.value} · {views.local(run.created_at, with_date=True)} · {run.id}"


# -- actions -------------------------------------------------------------------------------------------


def _act(service: LauncherService, reports: ReportService, method: str, *args: Any, **kwargs: Any) -> Any:
    """A button's action on the report service, as the user this browser is logged in as now."""
    actor = allowed_actor(service, Permission.LAUNCH_NOTEBOOKS)
    if actor is None:
        views._error("You are signed out, or your role no longer allows this.")
        return None
    return views._run(getattr(reports, method), actor, *args, **kwargs)


def _read(call: Callable[[], Any], default: Any) -> Any:
    """A read for the page: a launcher error is shown where the content would be."""
    try:
        return call()
    except LauncherError as exc:
        st.warning(views._words(exc), icon=":material/warning:")
        return default


# -- the page ------------------------------------------------------------------------------------------


def reports(service: LauncherService, reports: ReportService, actor: Actor) -> None:
    st.title("Reports")
    st.caption(
        "Run a template unattended with parameters: it runs in the same isolated notebook runtime and keeps its "
        "executed notebook, an HTML rendering, its results and a record of what it ran on, so that it can be "
        "reproduced exactly later."
    )
    views._errors("reports")
    everyone = authorize(actor, Permission.MANAGE_NOTEBOOKS)
    templates: list[str] = _read(reports.templates, [])
    _run_form(service, reports, templates)
    runs: list[ReportRun] = _read(lambda: _runs(reports, actor, everyone), [])
    if any(not r.status.done for r in runs):
        _runs_fast(service, reports, everyone)
    else:
        _runs_slow(service, reports, everyone)
    _compare(reports, actor, runs)
    _schedules(service, reports, actor, everyone, templates, runs)


def _runs(reports: ReportService, actor: Actor, everyone: bool) -> list[ReportRun]:
    return reports.runs(actor, everyone=everyone)


def _param_inputs(reports: ReportService, template: str, prefix: str) -> dict[str, ParamValue] | None:
    """The template's parameters as typed inputs, their defaults filled in; None when they cannot be read."""
    defaults: dict[str, ParamValue] | None = _read(lambda: reports.parameters(template), None)
    if defaults is None:
        return None
    if not defaults:
        st.caption("This template takes no parameters.")
        return {}
    values: dict[str, ParamValue] = {}
    columns = st.columns(min(3, len(defaults)))
    for i, (name, default) in enumerate(defaults.items()):
        key = f"{prefix}-{template}-{name}"
        with columns[i % len(columns)]:
            if isinstance(default, bool):
                values[name] = st.checkbox(name, value=default, key=key)
            elif isinstance(default, int):
                values[name] = int(st.number_input(name, value=default, step=1, key=key))
            elif isinstance(default, float):
                values[name] = float(st.number_input(name, value=default, format="%g", key=key))
            else:
                values[name] = st.text_input(name, value=default, max_chars=MAX_PARAM_CHARS, key=key)
    return values


def _run_form(service: LauncherService, reports: ReportService, templates: list[str]) -> None:
    st.subheader("Run as report", anchor=False)
    if not templates:
        st.caption("No templates are installed.")
        return
    template = st.selectbox("Template", templates, key="report-template")
    params = _param_inputs(reports, template, "rp")
    if params is None:
        return
    if st.button("Run", type="primary", key="report-run", icon=":material/play_arrow:"):
        run = _act(service, reports, "run", template, params)
        if run is not None:
            st.session_state["report-select-next"] = run.id
        st.rerun()


@st.fragment(run_every=ACTIVE_REFRESH)
def _runs_fast(service: LauncherService, reports: ReportService, everyone: bool) -> None:
    _runs_live(service, reports, everyone, fast=True)


@st.fragment(run_every=IDLE_REFRESH)
def _runs_slow(service: LauncherService, reports: ReportService, everyone: bool) -> None:
    _runs_live(service, reports, everyone, fast=False)


def _runs_live(service: LauncherService, reports: ReportService, everyone: bool, fast: bool) -> None:
    actor = views._current_or_rerun(service, Permission.LAUNCH_NOTEBOOKS)
    runs: list[ReportRun] = _read(lambda: _runs(reports, actor, everyone), [])
    if any(not r.status.done for r in runs) != fast:
        st.rerun(scope="app")  # the other refresh speed
    st.subheader("Everyone's runs" if everyone else "Your runs", anchor=False)
    if not runs:
        st.caption("No report runs yet: run a template above.")
        return
    st.dataframe(run_rows(runs, everyone), hide_index=True, width="stretch")
    _details(service, reports, runs)


def _pick() -> None:
    st.session_state["report-selected"] = st.session_state.get("report-pick")


def _details(service: LauncherService, reports: ReportService, runs: list[ReportRun]) -> None:
    by_id = {r.id: r for r in runs}
    chosen = st.session_state.pop("report-select-next", None) or st.session_state.get("report-selected")
    if chosen not in by_id:
        chosen = runs[0].id
    st.session_state["report-selected"] = chosen
    st.session_state["report-pick"] = chosen
    picked = st.selectbox(
        "Run",
        list(by_id),
        format_func=lambda i: run_label(by_id[i]),
        key="report-pick",
        on_change=_pick,
    )
    with st.container(border=True, key="report-detail"):
        _run_detail(service, reports, by_id[picked])


def _run_detail(service: LauncherService, reports: ReportService, run: ReportRun) -> None:
    st.markdown(
        f"**{plain(run.template)}**, {plain(params_text(run.params))}: **{status_text(run)}**  \n"
        f"Requested by {plain(run.requested_by)} at {views.local(run.created_at, with_date=True)}"
        + (f", ran for {duration_text(run)}" if run.duration_s is not None else "")
        + (f" on {plain(run.host)}" if run.host else "")
        + f" · run `{run.id}`"
    )
    if run.status == ReportStatus.QUEUED:
        st.info("Waiting for the host to start it…", icon=":material/hourglass_top:")
    elif run.status == ReportStatus.RUNNING:
        st.info("Running the notebook…", icon=":material/sync:")
    elif run.status == ReportStatus.FAILED:
        _failure(run)
    if run.reproduces:
        _drift(run)
    if run.checked:
        st.caption(f"Last reproduced by run {run.checked}.")
    if run.status == ReportStatus.SUCCEEDED and complete_record(run.record):
        if st.button("Reproduce", key=f"reproduce-{run.id}", icon=":material/replay:"):
            again = _act(service, reports, "reproduce", run.id)
            if again is not None:
                st.session_state["report-select-next"] = again.id
            st.rerun(scope="app")
        st.caption("Runs it again on exactly what it ran on (image, template version, data snapshot, parameters).")
    if run.results:
        st.markdown("**Results**")
        st.json(run.results, expanded=2)
    if run.artifacts:
        st.markdown("**Artifacts**")
        links = "".join(
            f'<li><a href="{html.escape(artifact_url(run.id, path))}" target="_blank" rel="noopener noreferrer">'
            f"{html.escape(path)}</a></li>"
            for path in sorted(run.artifacts)
        )
        st.html(f'<ul class="nbl-artifacts" style="margin:0">{links}</ul>')
    if run.record:
        with st.expander("Record: what it ran on", expanded=False):
            st.table(plain_rows([{"field": k, "value": v} for k, v in run.record.items()]))


def _failure(run: ReportRun) -> None:
    st.error(f"This run failed: {plain(run.error or 'no reason was recorded')}", icon=":material/error:")
    cell = run.cell_error
    if cell is None:
        return
    with st.container(key="report-failing-cell"):
        st.markdown(f"**The failing cell** (cell {cell.cell}):")
        st.code(cell.source, language="python")
        st.code(f"{cell.ename}: {cell.evalue}", language=None)
        if cell.traceback:
            with st.expander("Traceback", expanded=False):
                st.code(cell.traceback, language=None)


def _drift(run: ReportRun) -> None:
    drift = run.drift
    if drift is None:
        if run.status.done:
            st.caption(f"Reproduces run {run.reproduces}: no verdict was recorded.")
        else:
            st.caption(f"Reproduces run {run.reproduces}: the verdict shows when it ends.")
        return
    if drift.same:
        st.success(
            f"Same: the results match run {run.reproduces} (relative tolerance {drift.tolerance:g}).",
            icon=":material/check_circle:",
        )
    else:
        st.error(f"DRIFT: the results differ from run {run.reproduces}.", icon=":material/difference:")
        st.code("\n".join(drift.differences), language=None)
    if drift.environment:
        st.markdown("What it ran on changed:")
        st.code("\n".join(drift.environment), language=None)
    else:
        st.caption("It ran on the same image, lockfile, data snapshot, template version, library and profile.")


# -- two runs side by side -------------------------------------------------------------------------------


def _compare(reports: ReportService, actor: Actor, runs: list[ReportRun]) -> None:
    st.subheader("Compare two runs", anchor=False)
    done = [r for r in runs if r.status.done]
    if len(done) < 2:
        st.caption("Two finished runs are needed for a comparison.")
        return
    by_id = {r.id: r for r in done}
    ids = list(by_id)
    left, right = st.columns(2)
    first = left.selectbox("First run", ids, index=1, format_func=lambda i: run_label(by_id[i]), key="compare-first")
    second = right.selectbox(
        "Second run", ids, index=0, format_func=lambda i: run_label(by_id[i]), key="compare-second"
    )
    if first is None or second is None or first == second:
        st.caption("Pick two different runs.")
        return
    differences: list[str] | None = _read(lambda: reports.compare(actor, first, second), None)
    with st.container(key="report-compare"):
        if differences is not None:
            if differences:
                st.warning(f"The results differ in {len(differences)} place(s) (compared exactly).")
            else:
                st.success("The results are the same (compared exactly).")
        st.table(plain_rows(compare_rows(by_id[first], by_id[second])))


# -- schedules --------------------------------------------------------------------------------------------


def _schedules(
    service: LauncherService,
    reports: ReportService,
    actor: Actor,
    everyone: bool,
    templates: list[str],
    runs: list[ReportRun],
) -> None:
    st.subheader("Schedules", anchor=False)
    items: list[tuple[ReportSchedule, float]] = _read(lambda: reports.schedules(actor, everyone=everyone), [])
    statuses = {r.id: r.status.value for r in runs}
    if not items:
        st.caption("No schedules.")
    for schedule, due in items:
        with st.container(key=f"schedule-{schedule.id}", border=True):
            text, button = st.columns([6, 1], vertical_alignment="center")
            last = (
                f"{schedule.last_run} ({statuses.get(schedule.last_run, 'older')})" if schedule.last_run else "none yet"
            )
            owner = f"{plain(schedule.user)}: " if everyone else ""
            text.markdown(
                f"{owner}**{plain(schedule.template)}**, {plain(params_text(schedule.params))}, "
                f"{describe_interval(schedule.every_s)}  \n"
                f"Next due {views.local(datetime.fromtimestamp(due, UTC), with_date=True)} · last run {last}"
            )
            if button.button("Remove", key=f"unschedule-{schedule.id}"):
                _act(service, reports, "remove_schedule", schedule.id)
                st.rerun()
    if not templates:
        return
    with st.expander("Add a schedule", expanded=False):
        template = st.selectbox("Template", templates, key="schedule-template")
        params = _param_inputs(reports, template, "sp")
        every = st.text_input("Every", value="1d", key="schedule-every", help="A number with s, m, h, d or w")
        if params is not None and st.button("Add schedule", key="schedule-add", icon=":material/schedule:"):
            _act(service, reports, "add_schedule", template, every, params)
            st.rerun()
