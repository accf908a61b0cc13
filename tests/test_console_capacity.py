"""The console's side of capacity (issue 11): profiles and names on the cards, a launch waiting for room with its
place and Cancel, several named sessions, a host that stopped answering, the admin's hosts and queue, and the
operators' /metrics. AppTest on a real Redis (no worker, no Docker: hosts are announced by the test), and one
Chromium walk that keeps screenshots."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx
import pytest
import redis
import streamlit as st
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from launcher.adapters.redis_store import SessionStore
from launcher.models import Actor, HostState, Reason, SessionStatus
from launcher.service import LauncherService
from launcher.settings import Profile, Settings
from tests.helpers import RecordingDispatcher, bring_to, free_port, new_context, register_hosts, wait_for
from tests.stack import random_instance
from tests.test_console import _console_factory, launch_keys, texts
from tests.test_login import asgi_module
from tests.web import reach_login

PROFILES = {
    "standard": Profile(cpus=2.0, mem_limit="4g", description="2 CPUs, 4 GB"),
    "small": Profile(cpus=1.0, mem_limit="2g", description="1 CPU, 2 GB"),
    "large": Profile(cpus=4.0, mem_limit="16g", roles=["admin"], description="4 CPUs, 16 GB"),
}
OPERATOR = Actor.operator("cap-test")


def capacity_settings(redis_url: str, tmp_path: Path, **overrides) -> Settings:
    values = {
        "instance": random_instance(),
        "redis_url": redis_url,
        "users_file": tmp_path / "users.json",
        "cookie_secret": secrets.token_urlsafe(32),
        "workspaces_dir": tmp_path / "workspaces",
        "sessions_dir": tmp_path / "sessions",
        "data_dir": tmp_path / "data",
        "workspace_images_dir": tmp_path / "workspace-images",
        "workspace_quota_enforce": "measure",
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def capacity_console(redis_url, monkeypatch, tmp_path):
    """``capacity_console(**settings)``: an AppTest factory for the console on a private Redis with these settings,
    with ``.settings``, ``.store`` and ``.service`` (a service over the same Redis that enqueues nothing)."""

    def build(**overrides):
        for key in Settings().to_env():  # an earlier build's environment: pydantic-settings would merge its dicts
            monkeypatch.delenv(key, raising=False)
        settings = capacity_settings(redis_url, tmp_path, **overrides)
        make = _console_factory(settings, monkeypatch, tmp_path)
        make.settings = settings
        make.store = SessionStore.from_settings(settings)
        make.service = LauncherService(settings, make.store, RecordingDispatcher())
        return make

    yield build
    st.cache_resource.clear()


def admin_page(make, user: str = "cap-ada"):
    at = make(user, "admin")
    at.switch_page("screens/admin.py").run()
    assert not at.exception, at.exception
    return at


# -- the researcher's page ----------------------------------------------------------------------------


def test_profile_picker_lists_only_the_profiles_of_the_role_default_first(capacity_console):
    """A researcher picks among the profiles their role may use (the default first, with its description); the
    launch reserves the picked one. An admin also sees the admin-only profile; one profile only: no picker."""
    make = capacity_console(profiles=PROFILES)
    register_hosts(make.store, make.settings.host_name)
    at = make("cap-rita", "researcher")
    picker = at.selectbox(key="profile-alpha_research")
    assert picker.options == ["standard · 2 CPUs, 4 GB", "small · 1 CPU, 2 GB"]
    assert picker.value == "standard"
    assert not [t for t in at.text_input if t.key == "name-alpha_research"]  # one session per user: no name
    picker.select("small").run()
    at.button(key="launch-alpha_research").click().run()
    assert not at.exception
    session = make.store.live_session_for("cap-rita")
    assert session.profile == "small" and session.cpus == 1.0 and session.mem_bytes == 2 * 2**30
    assert "small (1 CPU, 2 GB)" in texts(at)

    at = make("cap-ada", "admin")
    assert at.selectbox(key="profile-alpha_research").options == [
        "standard · 2 CPUs, 4 GB",
        "large · 4 CPUs, 16 GB",
        "small · 1 CPU, 2 GB",
    ]

    make = capacity_console(profiles={"standard": PROFILES["standard"]})
    register_hosts(make.store, make.settings.host_name)
    at = make("cap-rita", "researcher")
    assert "launch-alpha_research" in launch_keys(at)
    assert not [s for s in at.selectbox if (s.key or "").startswith("profile-")]


def test_a_launch_beyond_room_waits_with_its_place_and_cancel_takes_it_out(capacity_console):
    """With no room, a launch waits: the page tells its place, the estimate, the time waited, and offers a Cancel
    that asks first; cancelling ends the launch at once and brings the cards back."""
    make = capacity_console()
    register_hosts(make.store, make.settings.host_name, max_sessions=1)
    first = make.service.launch(OPERATOR, "alpha_research", user="cap-olga")  # takes the only seat
    assert first.status == SessionStatus.QUEUED

    at = make("cap-rosa", "researcher")
    at.button(key="launch-alpha_research").click().run()
    assert not at.exception
    waiting = make.store.live_session_for("cap-rosa")
    assert waiting.status == SessionStatus.WAITING
    page = texts(at)
    assert "Waiting for room: number 1 in the queue: no estimate yet; waiting for" in page
    assert "waiting for room" in page  # its state, in words
    assert launch_keys(at) == set() and not at.exception

    at.button(key="stop").click().run()
    assert "Cancel this launch?" in texts(at)
    assert make.store.get(waiting.id).status == SessionStatus.WAITING  # asked first: nothing happened yet
    at.button(key="stop-yes").click().run()
    ended = make.store.get(waiting.id)
    assert ended.status == SessionStatus.STOPPED and ended.stop_reason == Reason.USER
    assert "launch-alpha_research" in launch_keys(at)
    assert make.store.get(first.id).status == SessionStatus.QUEUED  # the other user's session is untouched


def test_the_queue_place_moves_up_as_earlier_launches_leave(capacity_console):
    """Second in the queue, then first when the launch ahead is cancelled."""
    make = capacity_console()
    register_hosts(make.store, make.settings.host_name, max_sessions=1)
    make.service.launch(OPERATOR, "alpha_research", user="cap-olga")
    ahead = make.service.launch(OPERATOR, "alpha_research", user="cap-otto")
    at = make("cap-rosa", "researcher")
    at.button(key="launch-alpha_research").click().run()
    assert "number 2 in the queue" in texts(at)
    make.service.stop(OPERATOR, session_id=ahead.id)
    at.run()
    assert "number 1 in the queue" in texts(at)


def test_two_named_sessions_are_shown_and_stopped_separately(capacity_console):
    """With two sessions per user, each card has a name field; a user with two sessions sees two panels, each
    with its name, profile and state, and stops one of them only."""
    make = capacity_console(max_sessions_per_user=2)
    register_hosts(make.store, make.settings.host_name)
    at = make("cap-nina", "researcher")
    name = at.text_input(key="name-alpha_research")
    assert name.value == "alpha-research"
    at.button(key="launch-alpha_research").click().run()
    one = make.store.live_session_for("cap-nina")
    assert one.name == "alpha-research"
    assert launch_keys(at) == set()  # a launch in progress: one at a time
    assert "you can start another one when this launch has finished starting" in texts(at)
    bring_to(make.store, one.id, SessionStatus.RUNNING)

    at.run()
    assert "Start another notebook (1 of your 2 in use)" in texts(at)
    assert at.text_input(key="name-alpha_research").value == "alpha-research-2"  # the free name
    at.text_input(key="name-factor_analysis").input("factors-b").run()
    at.button(key="launch-factor_analysis").click().run()
    assert not at.exception
    two = next(s for s in make.store.live_sessions_for("cap-nina") if s.id != one.id)
    assert two.name == "factors-b" and two.template == "factor_analysis"
    bring_to(make.store, two.id, SessionStatus.RUNNING)

    at.run()
    page = texts(at)
    assert "**alpha-research** · Alpha Research" in page or "alpha-research" in page
    assert page.count("Open JupyterLab") == 2 and "factors-b" in page
    assert {f"stop-{one.id}", f"stop-{two.id}"} <= {b.key for b in at.button}
    assert launch_keys(at) == set()  # both seats in use
    at.button(key=f"stop-{one.id}").click().run()
    assert "Stop this notebook?" in texts(at)
    at.button(key=f"stop-yes-{one.id}").click().run()
    assert make.store.get(one.id).status == SessionStatus.STOPPING
    assert make.store.get(two.id).status == SessionStatus.RUNNING


def test_a_session_on_a_host_that_stopped_answering_says_so(capacity_console):
    """A running session whose host's worker went silent shows as host unreachable, with why, not as running."""
    make = capacity_console()
    register_hosts(make.store, make.settings.host_name)
    session = make.service.launch(OPERATOR, "alpha_research", user="cap-hugo")
    bring_to(make.store, session.id, SessionStatus.RUNNING)
    make.store.mark_host_gone(make.settings.host_name)
    at = make("cap-hugo", "researcher")
    assert not at.exception
    page = texts(at)
    assert "host unreachable" in page and "Host unreachable." in page
    assert "has not answered the launcher" in page and "Ready: started in" not in page
    assert "stop" in {b.key for b in at.button}


def test_a_launch_error_stays_until_dismissed(capacity_console):
    """A refused launch (the name is taken) is told in words and stays on the page until dismissed."""
    make = capacity_console(max_sessions_per_user=2)
    register_hosts(make.store, make.settings.host_name)
    first = make.service.launch(OPERATOR, "alpha_research", user="cap-ines", name="mine")
    bring_to(make.store, first.id, SessionStatus.RUNNING)
    at = make("cap-ines", "researcher")
    at.text_input(key="name-factor_analysis").input("mine").run()
    at.button(key="launch-factor_analysis").click().run()
    told = ["You already have a live session named 'mine': choose another name"]
    assert [e.value for e in at.error] == told
    at.run()
    at.run()
    assert [e.value for e in at.error] == told
    at.button(key="dismiss-0").click().run()
    assert not at.error and not at.exception


# -- the admin's page ---------------------------------------------------------------------------------


def test_admin_hosts_table_and_drain(capacity_console):
    """The hosts table shows each host's state, sessions, CPUs and memory; Drain and Undrain change the state
    (audited). Before any host registers, the section says what to check."""
    make = capacity_console()
    at = admin_page(make)
    assert "No Docker host has registered: is a worker running?" in texts(at)

    register_hosts(make.store, make.settings.host_name, "cap-h2", cpus=8.0, mem_gib=32.0, max_sessions=3)
    make.service.launch(OPERATOR, "alpha_research", user="cap-olga")
    at.run()
    page = texts(at)
    assert "2 hosts: 2 up" in page
    for cell in ("cap-h2", "of 3", "of 8", "of 32.0", "ago"):
        assert cell in page
    assert "2 of 8" in page or "0 of 8" in page  # the launch went to one of the two hosts

    at.button(key="drain-cap-h2").click().run()
    assert not at.exception
    assert make.store.host("cap-h2").state == HostState.DRAINING
    assert "2 hosts: 1 up, 1 draining" in texts(at)
    assert at.button(key="drain-cap-h2").label == "Undrain cap-h2"
    at.button(key="drain-cap-h2").click().run()
    assert make.store.host("cap-h2").state == HostState.UP
    actions = [(e.action, e.actor, e.detail) for e in make.store.audit(limit=20)]
    assert ("drain", "admin:cap-ada", "cap-h2") in actions and ("undrain", "admin:cap-ada", "cap-h2") in actions


def test_admin_queue_lists_waiting_launches_in_order_and_removes_one(capacity_console):
    """The queue section lists the waiting launches in order (place, user, name, profile, wait) with counts; Remove
    asks, then stops that launch as the admin (audited) and the one behind moves up."""
    make = capacity_console(profiles=PROFILES)
    at = admin_page(make)
    assert "No launch is waiting for room. No launch has been admitted yet." in texts(at)

    register_hosts(make.store, make.settings.host_name, max_sessions=1)
    make.service.launch(OPERATOR, "alpha_research", user="cap-olga")
    rosa = make.service.launch(OPERATOR, "alpha_research", user="cap-rosa", profile="small")
    tom = make.service.launch(OPERATOR, "factor_analysis", user="cap-tom", name="tom-run")
    assert rosa.status == tom.status == SessionStatus.WAITING
    at.run()
    page = texts(at)
    assert "2 launches waiting for room; the oldest for" in page and "1 admission so far" in page
    assert page.index("cap-rosa") < page.index("cap-tom") and "tom-run" in page and "small" in page

    at.button(key=f"dequeue-{rosa.id}").click().run()
    assert make.store.get(rosa.id).status == SessionStatus.WAITING  # asked first
    at.button(key=f"dequeue-yes-{rosa.id}").click().run()
    assert not at.exception
    removed = make.store.get(rosa.id)
    assert removed.status == SessionStatus.STOPPED and removed.stop_reason == Reason.ADMIN
    assert any(e.session_id == rosa.id and e.actor == "admin:cap-ada" for e in make.store.audit(user="cap-rosa"))
    assert make.store.queue_position(make.store.get(tom.id)) == 1
    assert "1 launch waiting for room" in texts(at) and f"dequeue-{rosa.id}" not in {b.key for b in at.button}


# -- /metrics -----------------------------------------------------------------------------------------


def metrics_client(monkeypatch, settings: Settings) -> TestClient:
    asgi = asgi_module(monkeypatch)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    app = Starlette(routes=asgi.console_routes(settings, client), middleware=asgi.console_middleware())
    return TestClient(app)


def test_metrics_answer_404_without_a_configured_token(redis_url, tmp_path, monkeypatch):
    """No LAUNCHER_METRICS_TOKEN: /metrics does not exist, whatever the request carries."""
    settings = capacity_settings(redis_url, tmp_path)
    client = metrics_client(monkeypatch, settings)
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404


def test_metrics_need_the_bearer_token_and_name_no_user(redis_url, tmp_path, monkeypatch):
    """Without the token 401, a wrong one 403; the right one gets the Prometheus text format with the queue, the
    admissions, sessions by status and each host, and no user name or session id in it."""
    from prometheus_client.parser import text_string_to_metric_families

    token = secrets.token_urlsafe(32)
    settings = capacity_settings(redis_url, tmp_path, metrics_token=SecretStr(token))
    store = SessionStore.from_settings(settings)
    register_hosts(store, settings.host_name, "cap-h2", cpus=8.0, mem_gib=32.0, max_sessions=1)
    service = LauncherService(settings, store, RecordingDispatcher())
    users = ["cap-metric-anna", "cap-metric-bert", "cap-metric-carl"]
    sessions = [service.launch(OPERATOR, "alpha_research", user=u, name=f"secret-name-{i}") for i, u in enumerate(users)]
    bring_to(store, sessions[0].id, SessionStatus.RUNNING)
    assert sessions[2].status == SessionStatus.WAITING

    client = metrics_client(monkeypatch, settings)
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}x"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 5000}).status_code == 401

    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert response.headers["cache-control"] == "no-store"
    body = response.text
    for secret in [*users, *(s.id for s in sessions), "secret-name", token]:
        assert secret not in body
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"\\\n]*"\})? -?[0-9.e+-]+$')
    assert all(sample.match(line) for line in body.splitlines() if not line.startswith("#")), body

    values = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert values[("nbl_queue_depth", ())] == 1
    assert values[("nbl_admissions_total", ())] == 2
    assert values[("nbl_sessions", (("status", "waiting"),))] == 1
    assert values[("nbl_sessions", (("status", "running"),))] == 1
    assert values[("nbl_sessions", (("status", "queued"),))] == 1
    assert values[("nbl_sessions", (("status", "stopping"),))] == 0
    assert values[("nbl_queue_oldest_wait_seconds", ())] >= 0
    assert ("nbl_admission_wait_seconds", (("quantile", "0.99"),)) in values
    assert values[("nbl_admission_wait_seconds_count", ())] == 2
    for host in (settings.host_name, "cap-h2"):
        assert values[("nbl_host_up", (("host", host),))] == 1
        assert values[("nbl_host_sessions", (("host", host),))] == 1
        assert values[("nbl_host_cpus", (("host", host),))] > 0
        assert values[("nbl_host_cpus_used", (("host", host),))] == 2
        assert values[("nbl_host_memory_used_bytes", (("host", host),))] == 4 * 2**30
    assert values[("nbl_host_memory_bytes", (("host", "cap-h2"),))] == 32 * 2**30

    store.mark_host_gone("cap-h2")
    again = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert 'nbl_host_up{host="cap-h2"} 0' in again


def test_metrics_quantiles_and_label_escaping():
    """The summary's quantiles by nearest rank; label values escaped as the text format wants."""
    from ui.asgi import _label, quantile

    waits = [float(i) for i in range(1, 101)]
    assert (quantile(waits, 0.5), quantile(waits, 0.9), quantile(waits, 0.99)) == (50.0, 90.0, 99.0)
    assert quantile([], 0.5) == 0.0 and quantile([3.0], 0.99) == 3.0
    assert _label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


# -- Chromium: the waiting state and the admin's capacity sections, with screenshots --------------------


@pytest.mark.docker
def test_waiting_launch_and_admin_capacity_in_a_browser(browser, redis_url, tmp_path):
    """In Chromium: a launch beyond room shows its place and Cancel; the admin sees hosts and the queue and
    removes the entry; screenshots in build/test-artifacts/console/."""
    from tests.stack import start_console
    from tests.test_console import settle
    from tests.test_console_journeys import ARTIFACTS
    from ui.auth import UserStore

    token = secrets.token_urlsafe(32)
    settings = capacity_settings(
        redis_url,
        tmp_path,
        console_url=f"http://127.0.0.1:{free_port()}",
        profiles=PROFILES,
        metrics_token=SecretStr(token),
    )
    store = SessionStore.from_settings(settings)
    register_hosts(store, settings.host_name, max_sessions=1)
    register_hosts(store, "gpu-a", cpus=16.0, mem_gib=64.0, max_sessions=2)
    store.set_draining("gpu-a", True)
    service = LauncherService(settings, store, RecordingDispatcher())
    service.launch(OPERATOR, "alpha_research", user="br-olga")  # takes the only seat
    users = UserStore(settings.users_file)
    users.set_user("br-rosa", "researcher", "rosa-password-1")
    users.set_user("br-ada", "admin", "ada-password-1")
    proc, url = start_console(settings, tmp_path, LAUNCHER_USERS_FILE=str(settings.users_file))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The real console process serves /metrics beside Streamlit's pages.
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
    scraped = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert scraped.status_code == 200 and 'nbl_host_up{host="gpu-a"} 1' in scraped.text

    def login(page, user: str, password: str) -> None:
        reach_login(page, url, settle, ARTIFACTS / f"login-first-try-{user}.png")
        page.wait_for_url(re.compile(r".*/login(\?.*)?$"))
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("button[type=submit]")
        settle(page)

    context = new_context(browser)
    try:
        page = context.new_page()
        login(page, "br-rosa", "rosa-password-1")
        page.wait_for_selector(".st-key-launch-alpha_research button", timeout=30_000)
        page.screenshot(path=ARTIFACTS / "cap-01-profile-picker.png", full_page=True)
        page.click(".st-key-launch-alpha_research button")
        page.get_by_text(re.compile(r"Waiting for room: number 1 in the queue")).first.wait_for(timeout=10_000)
        page.get_by_role("button", name="Cancel…").wait_for(timeout=10_000)
        page.screenshot(path=ARTIFACTS / "cap-02-waiting-for-room.png", full_page=True)
        waiting = store.live_session_for("br-rosa")
        assert waiting.status == SessionStatus.WAITING

        admin = context.browser.new_context(viewport={"width": 1280, "height": 1200})
        admin.route(lambda u: not re.match(r"^(http|ws)://127\.0\.0\.1[:/]", u), lambda route: route.abort())
        apage = admin.new_page()
        login(apage, "br-ada", "ada-password-1")
        apage.goto(url + "/admin")
        settle(apage)
        apage.get_by_text("1 launch waiting for room").wait_for(timeout=30_000)
        apage.get_by_text("2 hosts: 1 up, 1 draining").wait_for(timeout=30_000)
        apage.get_by_role("button", name="Undrain gpu-a").wait_for(timeout=30_000)
        apage.get_by_role("button", name="Remove…").wait_for(timeout=30_000)
        apage.wait_for_function(
            "document.querySelectorAll('[data-testid=stDataFrame] canvas, [data-testid=stDataFrameResizable]')"
            ".length >= 2",
            timeout=30_000,
        )
        apage.wait_for_timeout(1500)  # the tables draw themselves after they are attached
        apage.screenshot(path=ARTIFACTS / "cap-03-admin-hosts-and-queue.png", full_page=True)
        apage.get_by_role("button", name="Remove…").click()
        apage.get_by_role("button", name="Remove", exact=True).click()
        apage.get_by_text("No launch is waiting for room.").wait_for(timeout=30_000)
        apage.get_by_role("button", name="Undrain gpu-a").click()
        wait_for(lambda: store.host("gpu-a").state == HostState.UP, 10, "gpu-a to take sessions again")
        apage.get_by_role("button", name="Drain gpu-a").wait_for(timeout=30_000)
        assert store.get(waiting.id).status == SessionStatus.STOPPED
        page.bring_to_front()
        page.wait_for_selector(".st-key-launch-alpha_research button", timeout=30_000)
        apage.screenshot(path=ARTIFACTS / "cap-04-admin-queue-emptied.png", full_page=True)
        admin.close()
    finally:
        context.close()
        proc.stop()
