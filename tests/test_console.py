"""The Streamlit console with AppTest, per role, against the real stack (Redis, worker, Docker)."""

from __future__ import annotations

import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from launcher.models import Actor, SessionStatus
from launcher.settings import REPO_ROOT

pytestmark = pytest.mark.docker
APP = str(REPO_ROOT / "ui" / "app.py")


@pytest.fixture
def console(clean_stack, monkeypatch, tmp_path):
    """An AppTest factory for the console wired to the stack; OIDC mode, so AppTest's user applies."""
    for key, value in clean_stack.settings.to_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LAUNCHER_AUTH_MODE", "oidc")
    monkeypatch.setenv("LAUNCHER_WARN_BEFORE_REAP_S", str(5 * 3600))  # show the keep-running offer
    monkeypatch.chdir(tmp_path)
    st.cache_resource.clear()

    def make(user: str, role: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.user = {"is_logged_in": True, "sub": user, "email": f"{user}@example.com", "roles": [role]}
        return at.run()

    yield make
    st.cache_resource.clear()


def texts(at: AppTest) -> str:
    """Everything the page shows, as text (elements' protobufs, link targets included)."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def rerun_until(at: AppTest, predicate, timeout: float, what: str) -> AppTest:
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        if predicate(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page shows:\n{texts(at)[-2000:]}")
        time.sleep(0.3)


def test_viewer_sees_no_launch(console):
    """A viewer gets the overview page without any Launch button."""
    at = console("ui-vera", "viewer")
    assert not at.exception
    assert [b for b in at.button if b.key and b.key.startswith("launch-")] == []
    assert "may not launch notebooks" in texts(at)


def test_researcher_launches_sees_status_and_stops(clean_stack, console):
    """A researcher launches from a card, watches it become running with an Open link, keeps it alive, stops it."""
    at = console("ui-rita", "researcher")
    assert not at.exception
    assert {b.key for b in at.button} >= {"launch-alpha_research", "launch-factor_analysis", "launch-backtest_review"}
    at.button(key="launch-alpha_research").click().run()
    session = clean_stack.store.live_session_for("ui-rita")
    assert session is not None and session.template == "alpha_research"
    seen = set()

    def running(a: AppTest) -> bool:
        page = texts(a)
        for word in ("Queued", "Starting", "Running"):
            if word in page:
                seen.add(word)
        return "Open JupyterLab" in page

    rerun_until(at, running, 120, "the session to run")
    assert "Running" in seen
    token = clean_stack.store.get(session.id).token.get_secret_value()
    assert f"token={token}" in texts(at)  # the owner's Open link carries their token
    before = clean_stack.store.get(session.id).last_activity_at
    at.button(key="keepalive").click().run()
    assert clean_stack.store.get(session.id).last_activity_at > before
    assert any(e.action == "keepalive" for e in clean_stack.store.audit(user="ui-rita"))
    at.button(key="stop").click().run()
    rerun_until(at, lambda a: "launch-alpha_research" in {b.key for b in a.button}, 60, "the cards to come back")
    assert clean_stack.store.get(session.id).status == SessionStatus.STOPPED


def test_admin_sees_others_stops_one_and_stops_all_without_tokens(clean_stack, console):
    """An admin sees other users' sessions (never a token), stops one, then confirms stop-all."""
    op = Actor.operator("ui-test")
    svc = clean_stack.service
    sessions = [svc.launch(op, "alpha_research", user=u) for u in ("ui-owen", "ui-olga", "ui-omar")]
    for s in sessions:
        assert svc.wait(op, s.id, {SessionStatus.RUNNING}, 120).status == SessionStatus.RUNNING
    tokens = [clean_stack.store.get(s.id).token.get_secret_value() for s in sessions]

    at = console("ui-ada", "admin")
    at.switch_page("pages/admin.py").run()
    assert not at.exception
    page = texts(at)
    assert all(u in page for u in ("ui-owen", "ui-olga", "ui-omar"))
    assert not any(t in page for t in tokens)

    at.selectbox(key="stop-one").select(sessions[0].id).run()
    at.button(key="stop-one-button").click().run()
    assert svc.wait(op, sessions[0].id, {SessionStatus.STOPPED}, 60).stop_reason == "admin"

    at.button(key="stop-all").click().run()
    assert "Stop all 2 live sessions?" in texts(at)
    at.button(key="stop-all-yes").click().run()
    rerun_until(at, lambda a: "Stop all finished: 2 of 2 stopped." in texts(a), 120, "stop-all to finish")
    assert clean_stack.store.count_live() == 0
    at.text_input(key="audit-user").input("ui-olga").run()
    page = texts(at)
    assert "ui-olga" in page and "ui-owen" not in page.split("Audit trail", 1)[1]
    assert not any(t in texts(at) for t in tokens)


def test_other_researcher_never_sees_a_token(clean_stack, console):
    """One user's token never appears on another researcher's page."""
    op = Actor.operator("ui-test")
    s = clean_stack.service.launch(op, "alpha_research", user="ui-tina")
    clean_stack.service.wait(op, s.id, {SessionStatus.RUNNING}, 120)
    token = clean_stack.store.get(s.id).token.get_secret_value()
    at = console("ui-ulf", "researcher")
    assert token not in texts(at)
    assert "launch-alpha_research" in {b.key for b in at.button}


def test_feature_switch_turns_the_page_off(console, monkeypatch):
    """With the feature switched off, nobody gets the launcher."""
    monkeypatch.setenv("LAUNCHER_FEATURE_NOTEBOOK_LAUNCHER", "false")
    st.cache_resource.clear()
    at = console("ui-rita", "researcher")
    assert "switched off" in texts(at) and not at.button
